"""Setting the scan store up: its configuration, the service's XSCREEN_STORE_* settings and metrics, and
`xscreen store-purge`."""

from __future__ import annotations

import os

import pytest

from tests.support.store_bags import bag, bag_folders
from xscreen.cli import main
from xscreen.service.metrics import ServiceMetrics
from xscreen.service.settings import SettingsError, load_settings
from xscreen.store import FAILURE_REASONS, ScanStore, StoreConfig, StoreConfigError, open_store

SECRET = "pw-0f9e8d7c"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("XSCREEN_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_bags": 0}, "max_bags must be > 0"),
        ({"max_bytes": -1}, "max_bytes must be > 0"),
        ({"max_age_s": 0}, "max_age_s must be > 0"),
        ({"database_url": f"mysql://u:{SECRET}@h/db"}, "scheme 'mysql'"),
        ({"database_url": "not a url"}, "not a URL"),
        ({"database_url": f"postgresql://u:{SECRET}@h:5432"}, "names no database"),
        ({"database_url": "sqlite://"}, "needs a file"),
    ],
)
def test_bad_store_configs_say_why_without_the_password(tmp_path, kwargs, match):
    with pytest.raises(StoreConfigError, match=match) as info:
        StoreConfig(tmp_path, **kwargs)
    assert SECRET not in str(info.value)


def test_postgresql_urls_use_pg8000_and_hide_the_password(tmp_path):
    config = StoreConfig(tmp_path, database_url=f"postgresql://xs:{SECRET}@db.site:5432/store")
    assert config.url == f"postgresql+pg8000://xs:{SECRET}@db.site:5432/store" and config.is_postgres
    assert SECRET not in repr(config) and SECRET not in config.describe()
    assert "postgresql+pg8000://xs:***@db.site:5432/store" in config.describe()
    assert StoreConfig(tmp_path).url == f"sqlite:///{tmp_path.resolve()}/index.sqlite3"


def test_no_store_folder_means_no_store_and_a_bad_one_a_clear_error(tmp_path):
    assert open_store(None) is None
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreConfigError, match="cannot write in the store folder"):
        ScanStore(StoreConfig(tmp_path / "file"))


def test_service_settings_make_the_store_config(monkeypatch, tmp_path):
    assert load_settings().store_config() is None  # off by default
    monkeypatch.setenv("XSCREEN_STORE_DIR", str(tmp_path))
    monkeypatch.setenv("XSCREEN_STORE_DATABASE_URL", f"postgresql://xs:{SECRET}@db:5432/store")
    monkeypatch.setenv("XSCREEN_STORE_MAX_BAGS", "500")
    monkeypatch.setenv("XSCREEN_STORE_MAX_BYTES", "1000000")
    monkeypatch.setenv("XSCREEN_STORE_MAX_AGE_S", "86400")
    settings = load_settings()
    config = settings.store_config()
    assert (config.store_dir, config.max_bags, config.max_bytes, config.max_age_s) == (
        tmp_path,
        500,
        10**6,
        86400,
    )
    assert config.url.startswith("postgresql+pg8000://xs:")
    assert SECRET not in repr(settings) and SECRET not in repr(config)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"XSCREEN_STORE_DIR": "/x", "XSCREEN_STORE_MAX_BAGS": "0"}, "XSCREEN_STORE_MAX_BAGS"),
        ({"XSCREEN_STORE_DIR": "/x", "XSCREEN_STORE_MAX_BYTES": "-5"}, "XSCREEN_STORE_MAX_BYTES"),
        ({"XSCREEN_STORE_DIR": "/x", "XSCREEN_STORE_MAX_AGE_S": "0"}, "XSCREEN_STORE_MAX_AGE_S"),
        (
            {"XSCREEN_STORE_DIR": "/x", "XSCREEN_STORE_DATABASE_URL": f"oracle://a:{SECRET}@h/d"},
            "scheme 'oracle'",
        ),
        ({"XSCREEN_STORE_DATABASE_URL": f"postgresql://a:{SECRET}@h/d"}, "needs XSCREEN_STORE_DIR too"),
    ],
)
def test_bad_store_settings_stop_the_start_with_one_line(monkeypatch, env, match):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=match) as info:
        load_settings()
    assert SECRET not in str(info.value)


def test_store_metrics_exist_at_zero():
    text = ServiceMetrics().render().decode()
    for reason in FAILURE_REASONS:
        assert f'xscreen_store_failures_total{{reason="{reason}"}} 0.0' in text
    assert "\nxscreen_store_bags 0.0" in text and "\nxscreen_store_bytes 0.0" in text


def test_store_purge_command(tmp_path, monkeypatch, capsys):
    store = ScanStore(StoreConfig(tmp_path / "store"))
    for name, minutes in [("old", -60 * 24 * 40), ("mid", -60), ("new", 0), ("one", 1)]:
        assert store.put_bag(bag(name, minutes=minutes)).stored
    store.close()
    monkeypatch.setenv("XSCREEN_STORE_DIR", str(tmp_path / "store"))
    assert main(["store-purge", "--request-id", "one"]) == 0
    assert main(["store-purge", "--before", "2029-12-31T08:00:00Z"]) == 0  # bag() times are 2030-01-01 08:00
    assert main(["store-purge", "--before", "2030-01-01T08:30:00+01:00"]) == 0  # 07:30 UTC: "mid"
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" from ")[0] for line in out] == ["purged 1 bags", "purged 1 bags", "purged 1 bags"]
    assert bag_folders(tmp_path / "store") == ["new"]
    assert main(["store-purge", "--all"]) == 0 and bag_folders(tmp_path / "store") == []
    assert main(["store-purge", "--all", "--store-dir", str(tmp_path)]) == 2
    assert "no scan store in" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["store-purge", "--before", "2030-01-01"])
    assert exit_info.value.code == 2 and "has no time zone" in capsys.readouterr().err
