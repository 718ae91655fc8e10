"""Service configuration: one pydantic-settings ``Settings`` read from ``XSCREEN_*`` variables and flags.

It extends ``xscreen.inference.settings.InferenceSettings`` (model file, backend, device, scan limits,
threshold), the part ``xscreen detect`` reads too."""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from xscreen.inference.settings import (
    BUNDLED_WEIGHTS_NAME,
    InferenceSettings,
    SettingsError,
    describe_validation,
)
from xscreen.store.config import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_BAGS,
    DEFAULT_MAX_BYTES,
    StoreConfig,
    normalise_database_url,
)
from xscreen.store.errors import StoreConfigError

MIN_API_KEY_LENGTH = 16

log = logging.getLogger("xscreen.service.settings")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; any other name or address counts as exposed."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_keys(value: Any) -> Any:
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    return value


def read_keys_file(path: Path) -> list[str]:
    """One key per line; blank lines and lines starting with '#' are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read API keys file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"API keys file {path} is not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _check_key_characters(keys: list[str], what: str) -> None:
    """Keys must be printable ASCII without spaces: a client sends the header as bytes that the server
    reads as latin-1, so any other character could never match. The message never shows a key."""
    bad = [str(i) for i, key in enumerate(keys, 1) if not all("!" <= c <= "~" for c in key)]
    if bad:
        raise ValueError(
            f"{what}: key number {', '.join(bad)} (counting the variable's keys, then the file's) holds a "
            "non-ASCII, space or control character; keys must be printable ASCII (e.g. openssl rand -hex 32)"
        )


class Settings(InferenceSettings):
    """Everything the service reads at start. Each field is also ``XSCREEN_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="XSCREEN_", extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", min_length=1, description="bind address; non-loopback needs API keys")
    port: int = Field(8000, ge=1, le=65535)
    max_batch_size: int = Field(4, ge=1, le=64)
    max_queue_delay_ms: float = Field(5.0, ge=0, le=10_000)
    queue_size: int = Field(64, ge=1, le=100_000, description="scans waiting for the model; full -> 503")
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="per-request deadline -> 504")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="whole request body limit")
    max_views: int = Field(
        8, ge=1, le=64, description="views (high/low pairs) in one bag: one POST /detect or one DICOS study"
    )
    # -- memory budget, decode pool (docs/service.md "Memory budget and deadlines") ----------------------
    max_inflight_mpixels: float = Field(
        100.0,
        gt=0,
        le=1_000_000,
        description="megapixels of scans held at once from decode to answer (declared sizes); more waits "
        "up to budget_wait_s, then 503 memory_budget; one scan larger than this is admitted alone",
    )
    budget_wait_s: float = Field(
        2.0, ge=0, le=3600, description="longest wait for room in the memory budget (within the deadline)"
    )
    decode_workers: int = Field(
        2, ge=1, le=256, description="scans decoded and converted at once (each may use a second thread)"
    )
    formats: Annotated[list[Literal["png", "tiff", "npy", "raw", "dicom"]], NoDecode] = Field(
        default_factory=lambda: ["png", "tiff", "npy", "raw", "dicom"],
        description="accepted scan encodings (comma-separated); others are answered 415",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False, description="comma-separated; never logged"
    )
    api_keys_file: Path | None = Field(None, description="one key per line ('#' comments)")
    protect_metrics: bool = Field(False, description="require an API key for /metrics")
    protect_docs: bool = Field(
        True,
        description="require an API key for /openapi.json (the /docs and /redoc pages ask for it); "
        "false: the API description is public",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    warmup: bool = Field(True, description="run one inference before /readyz says ready")
    graceful_timeout_s: float = Field(30.0, gt=0, le=3600, description="wait for in-flight requests on stop")
    # -- request guard (docs/service.md "Limits"): checked before any route reads the body ----------------
    max_json_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024, description="body limit of every route but /detect, /render"
    )
    body_idle_timeout_s: float = Field(10.0, gt=0, le=3600, description="no body byte for this long -> 408")
    upload_timeout_s: float = Field(30.0, gt=0, le=3600, description="whole body not read within this -> 408")
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="request line + headers not complete within this: connection closed"
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=4096, le=16 * 1024 * 1024, description="request line + headers over this -> 431"
    )
    # DICOS network listener (docs/dicos.md); off unless dicos_port is set.
    dicos_port: int | None = Field(
        None, ge=1, le=65535, description="DICOS listener port (unset: no listener)"
    )
    dicos_host: str = Field("127.0.0.1", min_length=1, description="DICOS listener bind address")
    dicos_ae_title: str = Field("XSCREEN", min_length=1, max_length=16, description="the listener's AE title")
    dicos_allowed_aets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="calling AE titles allowed (comma-separated; empty: any, loopback only)",
    )
    dicos_dest_ae_title: str | None = Field(
        None, min_length=1, max_length=16, description="TDR destination AE"
    )
    dicos_dest_host: str | None = Field(None, min_length=1, description="TDR destination host")
    dicos_dest_port: int | None = Field(None, ge=1, le=65535, description="TDR destination port")
    dicos_output_dir: Path | None = Field(None, description="also write each TDR into this folder")
    dicos_pair_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a study with a view still missing an energy this long after its last DX is rejected",
    )
    dicos_max_pending: int = Field(
        32, ge=1, le=10_000, description="studies (bags) held waiting to be complete"
    )
    dicos_bag_views: int | None = Field(
        None,
        ge=1,
        le=64,
        description="views in every bag: a study is complete as soon as this many views have both "
        "energies, and not before (unset: on the sender's release, or after dicos_bag_wait_s)",
    )
    dicos_bag_wait_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="without dicos_bag_views: a study whose views all have both energies is complete this "
        "long after its last DX even if the association stays open",
    )
    dicos_retries: int = Field(3, ge=0, le=100, description="TDR C-STORE retries after the first attempt")
    dicos_retry_backoff_s: float = Field(
        1.0, ge=0, le=600, description="first retry delay, doubled each time"
    )
    # DICOS spool and size limits (docs/dicos.md "Durability" and "Limits")
    dicos_spool_dir: Path | None = Field(
        None,
        description="acknowledged DX halves kept here (fsync'd) until their TDR is delivered; "
        "unset: a new temporary folder per start (not durable across restarts)",
    )
    dicos_spool_max_bytes: int = Field(
        4 * 1024**3, ge=1024**2, description="spooled bytes past which a C-STORE is answered A700"
    )
    dicos_retry_max_backoff_s: float = Field(
        10.0, gt=0, le=3600, description="longest wait before retrying detection or a TDR delivery round"
    )
    dicos_max_dataset_bytes: int | None = Field(
        None, ge=64 * 1024, description="one C-STORE dataset; unset: 2 x max_pixels + 1 MiB"
    )
    dicos_max_association_bytes: int = Field(
        2 * 1024**3, ge=1024**2, description="P-DATA bytes one association may send before it is aborted"
    )
    # -- admin key, audit trail (docs/service.md "Models", "Audit trail") --------------------------------
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False, description="keys for /admin/* (comma-separated); none: disabled"
    )
    admin_keys_file: Path | None = Field(None, description="one admin key per line ('#' comments)")
    audit_path: Path | None = Field(None, description="JSON-lines audit file, one record per answered scan")
    audit_max_bytes: int = Field(100 * 1024 * 1024, ge=4096, description="rotate the audit file past this")
    audit_keep: int = Field(10, ge=1, le=10_000, description="rotated audit files kept (audit.jsonl.1 ...)")
    # -- scan store (docs/operations.md "Scan store"): off unless store_dir is set -------------------------
    store_dir: Path | None = Field(
        None, description="keep each answered bag's raw views, answer and model here (unset: nothing is kept)"
    )
    store_database_url: str | None = Field(
        None,
        repr=False,
        description="the store's index: postgresql://USER:PASSWORD@HOST:PORT/DB (pg8000) for replicas "
        "sharing one store; unset: SQLite in store_dir; never logged",
    )
    store_max_bags: int = Field(DEFAULT_MAX_BAGS, gt=0, description="bags kept at most; the oldest go first")
    store_max_bytes: int = Field(
        DEFAULT_MAX_BYTES,
        gt=0,
        description="disk bytes of bag files kept at most (whole blocks, as du counts)",
    )
    store_max_age_s: float = Field(DEFAULT_MAX_AGE_S, gt=0, description="bags older than this are deleted")
    # -- review console (docs/console.md): needs the scan store and at least one reviewer key --------------
    reviewer_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="keys that sign in to /console (comma-separated; separate from scan and admin keys); "
        "none: nobody can sign in",
    )
    reviewer_keys_file: Path | None = Field(None, description="one reviewer key per line ('#' comments)")
    console_session_ttl_s: float = Field(
        8 * 3600.0, gt=0, le=7 * 24 * 3600, description="a console sign-in lasts this long (cookie Max-Age)"
    )

    @field_validator("api_keys", "admin_keys", "reviewer_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        return _split_keys(value)

    @field_validator("dicos_allowed_aets", mode="before")
    @classmethod
    def _parse_aets(cls, value: Any) -> Any:
        return _split_keys(value)

    @model_validator(mode="after")
    def _check_dicos(self) -> Settings:
        dest = (self.dicos_dest_ae_title, self.dicos_dest_host, self.dicos_dest_port)
        if any(v is not None for v in dest) and not all(v is not None for v in dest):
            raise ValueError(
                "a DICOS destination needs all of XSCREEN_DICOS_DEST_AE_TITLE, _DEST_HOST and _DEST_PORT"
            )
        if self.dicos_bag_views is not None and self.dicos_bag_views > self.max_views:
            raise ValueError(
                f"XSCREEN_DICOS_BAG_VIEWS={self.dicos_bag_views} is more than "
                f"XSCREEN_MAX_VIEWS={self.max_views}"
            )
        if self.dicos_port is not None and not self.dicos_allowed_aets and not is_loopback(self.dicos_host):
            raise ValueError(
                f"refusing to run the DICOS listener on non-loopback host {self.dicos_host!r} "
                "without XSCREEN_DICOS_ALLOWED_AETS"
            )
        return self

    @field_validator("formats", mode="before")
    @classmethod
    def _parse_formats(cls, value: Any) -> Any:
        value = _split_keys(value)
        if isinstance(value, list):
            value = [v.lower() if isinstance(v, str) else v for v in value]
            if not value:
                raise ValueError("at least one format must be accepted (png, tiff, npy, raw, dicom)")
        return value

    @field_validator("store_database_url")
    @classmethod
    def _check_store_url(cls, value: str | None) -> str | None:
        try:
            return None if value is None else normalise_database_url(value)
        except StoreConfigError as exc:
            raise ValueError(str(exc)) from None  # the message names the scheme, never the URL

    @model_validator(mode="after")
    def _check_store(self) -> Settings:
        if self.store_database_url is not None and self.store_dir is None:
            raise ValueError(
                "XSCREEN_STORE_DATABASE_URL needs XSCREEN_STORE_DIR too: the bags' images are kept in that "
                "folder (shared by all replicas), the database holds their index"
            )
        return self

    def store_config(self) -> StoreConfig | None:
        """The scan store's configuration, or None when it is off (no store_dir)."""
        if self.store_dir is None:
            return None
        return StoreConfig(
            self.store_dir,
            database_url=self.store_database_url,
            max_bags=self.store_max_bags,
            max_bytes=self.store_max_bytes,
            max_age_s=self.store_max_age_s,
        )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        keys = self.all_api_keys()
        _check_key_characters(keys, "API keys (XSCREEN_API_KEYS, XSCREEN_API_KEYS_FILE)")
        admin = self.all_admin_keys()
        _check_key_characters(admin, "admin keys (XSCREEN_ADMIN_KEYS, XSCREEN_ADMIN_KEYS_FILE)")
        short = [k for k in keys if len(k) < MIN_API_KEY_LENGTH]
        if short:
            raise ValueError(
                f"API keys must be at least {MIN_API_KEY_LENGTH} characters ({len(short)} too short)"
            )
        if not keys and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on non-loopback host {self.host!r} without an API key: "
                "set XSCREEN_API_KEYS or XSCREEN_API_KEYS_FILE"
            )
        short = [k for k in admin if len(k) < MIN_API_KEY_LENGTH]
        if short:
            raise ValueError(
                f"admin keys must be at least {MIN_API_KEY_LENGTH} characters ({len(short)} too short)"
            )
        self._check_reviewer_keys(set(keys) | set(admin))
        return self

    def _check_reviewer_keys(self, other_keys: set[str]) -> None:
        """Reviewer keys: printable, long enough, and none of them a scan or admin key (one key, one role)."""
        reviewer = self.all_reviewer_keys()
        _check_key_characters(reviewer, "reviewer keys (XSCREEN_REVIEWER_KEYS, XSCREEN_REVIEWER_KEYS_FILE)")
        short = [k for k in reviewer if len(k) < MIN_API_KEY_LENGTH]
        if short:
            raise ValueError(
                f"reviewer keys must be at least {MIN_API_KEY_LENGTH} characters ({len(short)} too short)"
            )
        shared = [k for k in reviewer if k in other_keys]
        if shared:
            raise ValueError(
                f"{len(shared)} reviewer key(s) are also scan or admin keys: give each role its own keys"
            )

    def all_admin_keys(self) -> list[str]:
        """Keys from XSCREEN_ADMIN_KEYS plus those in XSCREEN_ADMIN_KEYS_FILE."""
        keys = list(self.admin_keys)
        if self.admin_keys_file is not None:
            keys += read_keys_file(self.admin_keys_file)
        return keys

    def all_reviewer_keys(self) -> list[str]:
        """Keys from XSCREEN_REVIEWER_KEYS plus those in XSCREEN_REVIEWER_KEYS_FILE."""
        keys = list(self.reviewer_keys)
        if self.reviewer_keys_file is not None:
            keys += read_keys_file(self.reviewer_keys_file)
        return keys

    def all_api_keys(self) -> list[str]:
        """Keys from XSCREEN_API_KEYS plus those in XSCREEN_API_KEYS_FILE (read at validation)."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            keys += read_keys_file(self.api_keys_file)
        return keys


def unknown_environment_variables(environ: dict[str, str] | None = None) -> list[str]:
    """One warning per ``XSCREEN_*`` variable that is no setting, naming the closest setting if any."""
    environ = dict(os.environ if environ is None else environ)
    known = [f"XSCREEN_{name.upper()}" for name in Settings.model_fields]
    warnings = []
    for var in sorted(environ):
        if not var.upper().startswith("XSCREEN_") or var.upper() in known:
            continue
        close = difflib.get_close_matches(var.upper(), known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"environment variable {var} is not a setting and is ignored{hint}")
    return warnings


SETTINGS_TABLE_BEGIN = "<!-- settings table: generated by tools/settings_table.py -->"
SETTINGS_TABLE_END = "<!-- end of settings table -->"


def _default_text(name: str, field: Any) -> str:
    """A setting's default as the docs show it (``none`` for unset, lists comma-separated)."""
    if name == "weights":
        return f"the bundled `{BUNDLED_WEIGHTS_NAME}`"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, list):
        value = ",".join(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def settings_table(flags: dict[str, tuple[str, str]]) -> str:
    """The markdown table of every setting: its ``xscreen serve`` flag, variable, default and meaning.

    ``flags`` maps a setting's name to (flag, the flag's help) for the settings ``xscreen serve`` has a flag
    for; a setting without a description of its own is described by its flag's help, less its default.
    """
    rows = [
        "| setting | `xscreen serve` flag | environment variable | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        flag, flag_help = flags.get(name, ("", ""))
        meaning = field.description or re.sub(r"\s*\(default[^)]*\)", "", flag_help)
        if get_origin(field.annotation) is Literal:
            meaning += f" ({', '.join(get_args(field.annotation))})"
        cells = [
            name,
            f"`{flag}`" if flag else "",
            f"`XSCREEN_{name.upper()}`",
            _default_text(name, field),
            meaning.replace("|", "\\|").replace("<", "&lt;"),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment with ``overrides`` (CLI flags) on top; one clear error on bad values."""
    for warning in unknown_environment_variables():
        log.warning(warning)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(f"invalid settings: {describe_validation(exc)}") from None
