"""deploy/k8s: every manifest validates against the Kubernetes schemas and agrees with the service."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from xscreen.service.metrics import ServiceMetrics
from xscreen.service.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# Custom resources: kubernetes-validate bundles only the built-in kinds' schemas.
CRD_GROUPS = {"monitoring.coreos.com"}
# the oldest Kubernetes minor still in common support, and the newest whose schemas are bundled
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def load(name: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return doc


DEPLOY = load("deployment.yaml")
POD = DEPLOY["spec"]["template"]["spec"]
(CONTAINER,) = POD["containers"]
ENV = {e["name"]: e["value"] for e in CONTAINER["env"]}
POD_LABELS = DEPLOY["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schemas(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path.name} is empty"
    for doc in docs:
        group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
        if group in CRD_GROUPS:
            pytest.skip(
                f"{path.name}: {doc['kind']} is a custom resource ({doc['apiVersion']}) without a "
                "bundled schema; test_servicemonitor_scrapes_the_service checks it by hand"
            )
        for version in VERSIONS:
            # strict: unknown fields (typos) fail too
            kubernetes_validate.validate(doc, version, strict=True)


def test_a_bad_manifest_is_refused():
    """The validator is not a no-op: a typo in a field name and a wrong type both fail."""
    broken = yaml.safe_load((K8S / "pdb.yaml").read_text())
    broken["spec"]["maxUnavailabel"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[1], strict=True)
    broken = yaml.safe_load((K8S / "service.yaml").read_text())
    broken["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[1], strict=True)


def test_kustomization_lists_every_manifest_and_sets_the_image():
    kust = load("kustomization.yaml")
    assert sorted(kust["resources"]) == [p.name for p in MANIFESTS]
    assert [i["name"] for i in kust["images"]] == [CONTAINER["image"]]


def test_deployment_env_is_made_of_real_settings():
    fields = {f"XSCREEN_{name.upper()}" for name in Settings.model_fields}
    xscreen_env = {k: v for k, v in ENV.items() if k.startswith("XSCREEN_")}
    assert set(xscreen_env) <= fields
    values = {k.removeprefix("XSCREEN_").lower(): v for k, v in xscreen_env.items()}
    values.pop("api_keys_file")  # mounted from the Secret in the cluster
    s = Settings(**values, api_keys="k" * 32)
    assert s.host == "0.0.0.0" and s.protect_metrics is True and s.device == "cuda"
    assert CONTAINER["ports"][0]["containerPort"] == s.port


def test_deployment_gpu_probes_keys_and_drain():
    res = CONTAINER["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    assert CONTAINER["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert CONTAINER["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert CONTAINER["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # the API keys file is the Secret's key api_keys.txt, mounted read-only
    keys_file = Path(ENV["XSCREEN_API_KEYS_FILE"])
    (mount,) = [m for m in CONTAINER["volumeMounts"] if m["mountPath"] == str(keys_file.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in POD["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "xscreen-api-keys" and keys_file.name == "api_keys.txt"
    # grace covers the preStop wait (endpoint removal) plus the service's own drain of in-flight scans
    command = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop >= 5
    assert POD["terminationGracePeriodSeconds"] > pre_stop + float(ENV["XSCREEN_GRACEFUL_TIMEOUT_S"])
    assert POD["securityContext"]["runAsUser"] == 10001  # the image's user


def test_service_ingress_pdb_and_policy_select_the_pods():
    svc = load("service.yaml")
    assert selects(svc["spec"]["selector"], POD_LABELS)
    assert svc["spec"]["ports"][0]["targetPort"] == CONTAINER["ports"][0]["name"]
    assert selects(DEPLOY["spec"]["selector"]["matchLabels"], POD_LABELS)
    assert selects(load("pdb.yaml")["spec"]["selector"]["matchLabels"], POD_LABELS)
    ing = load("ingress.yaml")
    paths = [p for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]]
    assert {p["path"] for p in paths} == {"/detect", "/render"}  # not /metrics
    for p in paths:
        assert p["backend"]["service"] == {"name": svc["metadata"]["name"], "port": {"name": "http"}}
    body = ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body.removesuffix("m")) * 2**20 >= int(ENV["XSCREEN_MAX_UPLOAD_BYTES"])
    pol = load("networkpolicy.yaml")
    assert selects(pol["spec"]["podSelector"]["matchLabels"], POD_LABELS)
    sources = [
        peer["namespaceSelector"]["matchLabels"] for rule in pol["spec"]["ingress"] for peer in rule["from"]
    ]
    assert [s["kubernetes.io/metadata.name"] for s in sources] == ["ingress-nginx", "monitoring"]
    for rule in pol["spec"]["ingress"]:
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_hpa_scales_the_deployment_on_a_metric_the_service_exports():
    hpa = load("hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == DEPLOY["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    exported = {m.name for m in ServiceMetrics().registry.collect()}
    assert metric["pods"]["metric"]["name"] in exported
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_servicemonitor_scrapes_the_service():
    mon = load("servicemonitor.yaml")
    assert mon["kind"] == "ServiceMonitor" and mon["apiVersion"] == "monitoring.coreos.com/v1"
    svc = load("service.yaml")
    assert selects(mon["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    (endpoint,) = mon["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # /metrics is protected (XSCREEN_PROTECT_METRICS), so the scrape sends a key from a Secret
    assert endpoint["authorization"]["type"] == "Bearer"
    assert set(endpoint["authorization"]["credentials"]) == {"name", "key"}


def _merge(base, patch):
    """A strategic merge as kubectl applies it to these fields: maps merge, lists of named items merge by
    name (containers, env, volumeMounts, volumes), other values are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {k: _merge(base[k], v) if k in base else v for k, v in {**base, **patch}.items()}
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i
                                                                  for i in base + patch):  # fmt: skip
        merged = {i["name"]: i for i in base}
        for item in patch:
            merged[item["name"]] = _merge(merged[item["name"]], item) if item["name"] in merged else item
        return list(merged.values())
    return patch


def test_console_component_adds_a_shared_store_and_reviewer_keys():
    """deploy/k8s/console: off by default; once added, every replica keeps its bags on one ReadWriteMany
    volume with a PostgreSQL index, and reads the reviewer keys; the result validates and the service
    reads every variable it sets."""
    folder = K8S / "console"
    component = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert "components" not in yaml.safe_load((K8S / "kustomization.yaml").read_text())  # off by default
    (pvc,) = [yaml.safe_load((folder / r).read_text()) for r in component["resources"]]
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    patch = yaml.safe_load((folder / component["patches"][0]["path"]).read_text())
    merged = _merge(DEPLOY, patch)
    for version in VERSIONS:
        kubernetes_validate.validate(pvc, version, strict=True)
        kubernetes_validate.validate(merged, version, strict=True)
    pod = merged["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    settings = {f"XSCREEN_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= settings | {"HOME"}, set(env) - settings
    assert set(ENV) < set(env)  # the base settings kept
    assert env["XSCREEN_STORE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "xscreen-store"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == set(volumes)
    assert volumes["store"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert env["XSCREEN_STORE_DIR"]["value"] == mounts["store"]
    assert env["XSCREEN_REVIEWER_KEYS_FILE"]["value"].startswith(mounts["reviewer-keys"] + "/")
    limit = int(env["XSCREEN_STORE_MAX_BYTES"]["value"])
    assert limit < int(pvc["spec"]["resources"]["requests"]["storage"].removesuffix("Gi")) * 2**30
