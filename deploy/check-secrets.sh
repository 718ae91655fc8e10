#!/bin/sh
# Check the secret files docker-compose.yml mounts, before `docker compose up`: each one present, a file,
# not empty, readable by the uid of the container that reads it; the metrics key among the API keys, no
# admin key among them, no key under 16 characters; the TLS certificate valid, not expiring within 14 days, and matching its key. One line per problem.
# Usage: sudo deploy/check-secrets.sh [SECRETS_DIR]     (default: deploy/secrets next to this script)
# Exit status 0 when all is well, 1 otherwise. How to create the files: deploy/secrets/README.md.
set -u

dir=${1:-$(dirname "$0")/secrets}
problems=0
say() { printf '%s\n' "$*" >&2; problems=$((problems + 1)); }

# file  uid-of-the-reader  compose-secret  service
SECRETS='tls_cert.pem 0 tls_cert proxy
tls_key.pem 0 tls_key proxy
api_keys.txt 10001 xscreen_api_keys detector
admin_keys.txt 10001 xscreen_admin_keys detector
metrics_key.txt 65534 xscreen_metrics_key prometheus
grafana_admin_password.txt 472 grafana_admin_password grafana
alertmanager_smtp_password.txt 65534 alertmanager_smtp_password alertmanager
alertmanager_webhook_token.txt 65534 alertmanager_webhook_token alertmanager'

readable_by() {  # file uid -> 0 if that uid may read the file (root always may)
    [ "$2" -eq 0 ] && return 0
    owner=$(stat -c %u "$1") mode=$(stat -c %a "$1")
    others=$((0$mode % 8)) user=$((0$mode / 64 % 8))
    [ $((others & 4)) -ne 0 ] && return 0
    [ "$owner" -eq "$2" ] && [ $((user & 4)) -ne 0 ] && return 0
    return 1
}

while read -r file uid secret service; do
    path="$dir/$file"
    if [ -d "$path" ]; then
        say "$path: is a directory (left by a docker compose up without the file): remove it and create the file as deploy/secrets/README.md says"
    elif [ ! -e "$path" ]; then
        say "$path: missing (compose secret $secret, read by $service): create it as deploy/secrets/README.md says"
    elif [ ! -s "$path" ]; then
        say "$path: empty (compose secret $secret, read by $service)"
    elif ! readable_by "$path" "$uid"; then
        say "$path: not readable by uid $uid ($service): sudo chown $uid $path && sudo chmod 0400 $path"
    fi
done <<EOF
$SECRETS
EOF

keys="$dir/api_keys.txt" metrics="$dir/metrics_key.txt"
if [ -f "$keys" ] && [ -f "$metrics" ]; then
    if [ ! -r "$keys" ] || [ ! -r "$metrics" ]; then
        say "$dir: cannot read the key files as uid $(id -u): run this check with sudo"
    else
        key=$(tr -d ' \t\r\n' < "$metrics")
        grep -v '^[[:space:]]*#' "$keys" | tr -d ' \t\r' | grep -qxF -- "$key" \
            || say "$metrics: its key is not a line of $keys, so Prometheus would be refused: append it there"
        short=$(grep -v '^[[:space:]]*#' "$keys" | tr -d ' \t\r' | awk 'length > 0 && length < 16' | wc -l)
        [ "$short" -eq 0 ] || say "$keys: $short key(s) shorter than 16 characters (the detector refuses to start)"
    fi
fi

admin="$dir/admin_keys.txt"
if [ -f "$admin" ] && [ -r "$admin" ] && [ -f "$keys" ] && [ -r "$keys" ]; then
    short=$(grep -v '^[[:space:]]*#' "$admin" | tr -d ' \t\r' | awk 'length > 0 && length < 16' | wc -l)
    [ "$short" -eq 0 ] || say "$admin: $short key(s) shorter than 16 characters (the detector refuses to start)"
    shared=0
    for k in $(grep -v '^[[:space:]]*#' "$admin" | tr -d ' \t\r'); do
        grep -v '^[[:space:]]*#' "$keys" | tr -d ' \t\r' | grep -qxF -- "$k" && shared=$((shared + 1))
    done
    [ "$shared" -eq 0 ] || say "$admin: $shared admin key(s) also in $keys: any scanner client could switch models; make a new one"
fi

cert="$dir/tls_cert.pem" tlskey="$dir/tls_key.pem"
if [ -f "$cert" ] && [ -f "$tlskey" ]; then
    if ! command -v openssl >/dev/null; then
        say "openssl not found: cannot check $cert"
    elif ! openssl x509 -in "$cert" -noout 2>/dev/null; then
        say "$cert: not a PEM certificate"
    elif ! openssl x509 -in "$cert" -noout -checkend 0 >/dev/null; then
        say "$cert: expired on $(openssl x509 -in "$cert" -noout -enddate | cut -d= -f2): renew it (docs/operations.md)"
    else
        openssl x509 -in "$cert" -noout -checkend 1209600 >/dev/null \
            || say "$cert: expires on $(openssl x509 -in "$cert" -noout -enddate | cut -d= -f2), within 14 days: renew it (docs/operations.md)"
        cert_pub=$(openssl x509 -in "$cert" -noout -pubkey 2>/dev/null)
        key_pub=$(openssl pkey -in "$tlskey" -pubout 2>/dev/null) \
            || say "$tlskey: not a readable PEM private key (run this check with sudo?)"
        [ -z "$key_pub" ] || [ "$cert_pub" = "$key_pub" ] || say "$tlskey: does not match the certificate $cert"
    fi
fi

if [ "$problems" -ne 0 ]; then
    echo "check-secrets: $problems problem(s) in $dir; docker compose up would fail or serve without them" >&2
    exit 1
fi
echo "check-secrets: all 8 secrets in $dir are present and readable by their containers"
