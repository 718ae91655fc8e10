"""Service settings: environment variables, validation errors, the API-key rule for exposed hosts."""

from __future__ import annotations

import pytest

from xscreen.service.settings import Settings, SettingsError, is_loopback, load_settings

KEY_A = "k" * 24
KEY_B = "secret-key-number-two"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("XSCREEN_"):
            monkeypatch.delenv(name)


def test_environment_variables_are_read(monkeypatch, tmp_path):
    monkeypatch.setenv("XSCREEN_PORT", "9123")
    monkeypatch.setenv("XSCREEN_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("XSCREEN_API_KEYS", f"{KEY_A}, {KEY_B}")
    monkeypatch.setenv("XSCREEN_DEVICE", "CPU")
    s = load_settings()
    assert (s.port, s.max_batch_size, s.device) == (9123, 8, "cpu")
    assert s.all_api_keys() == [KEY_A, KEY_B]
    # flags (keyword overrides) win over the environment; None means "flag not given"
    assert load_settings(port=9200, max_batch_size=None).port == 9200


def test_keys_file_and_keys_never_in_repr(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# site keys\n{KEY_A}\n\n{KEY_B}\n")
    s = load_settings(host="0.0.0.0", api_keys_file=str(keys), api_keys=KEY_B)
    assert s.all_api_keys() == [KEY_B, KEY_A, KEY_B]
    assert KEY_A not in repr(s) and KEY_B not in repr(s)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"port": 70000}, "XSCREEN_PORT"),
        ({"device": "gpu"}, "XSCREEN_DEVICE"),
        ({"max_batch_size": 0}, "XSCREEN_MAX_BATCH_SIZE"),
        ({"score_threshold": 1.5}, "XSCREEN_SCORE_THRESHOLD"),
        ({"host": "0.0.0.0"}, "refusing to listen on non-loopback host '0.0.0.0' without an API key"),
        ({"host": "10.1.2.3", "api_keys": "short"}, "at least 16 characters"),
        ({"api_keys_file": "/nonexistent/keys"}, "cannot read API keys file"),
        ({"backend": "onnxruntime"}, "XSCREEN_ONNX_PATH"),
        ({"no_such_setting": 1}, "XSCREEN_NO_SUCH_SETTING"),
        ({"formats": "png,jpeg"}, "XSCREEN_FORMATS"),
        ({"formats": ""}, "at least one format"),
    ],
)
def test_bad_values_give_one_clear_line(overrides, fragment):
    with pytest.raises(SettingsError) as info:
        load_settings(**overrides)
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg


def test_exposed_host_with_key_is_accepted():
    s = load_settings(host="0.0.0.0", api_keys=KEY_A)
    assert s.host == "0.0.0.0" and s.all_api_keys() == [KEY_A]


@pytest.mark.parametrize(
    ("host", "loop"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.4", False),
        ("example.org", False),
    ],
)
def test_loopback_detection(host, loop):
    assert is_loopback(host) is loop


def test_default_weights_point_into_model_package():
    s = Settings()
    assert s.weights.name == "xscreen-small-lacls.safetensors"
    assert s.weights.parent.name == "weights" and s.weights.parent.parent.name == "model"


def test_formats_from_environment(monkeypatch):
    assert load_settings().formats == ["png", "tiff", "npy", "raw", "dicom"]
    monkeypatch.setenv("XSCREEN_FORMATS", "PNG, raw")
    assert load_settings().formats == ["png", "raw"]


def test_la_bf16_setting_reaches_the_torch_backend(monkeypatch):
    import numpy as np

    from xscreen.inference.backend import make_backend

    monkeypatch.setenv("XSCREEN_LA_BF16", "true")
    monkeypatch.setenv("XSCREEN_DEVICE", "cpu")
    fast = make_backend(load_settings())
    assert fast.model.la_grad_bf16 is True
    monkeypatch.setenv("XSCREEN_LA_BF16", "false")
    exact = make_backend(load_settings())
    assert exact.model.la_grad_bf16 is False
    image = np.random.default_rng(0).uniform(0, 255, (96, 128, 3)).astype(np.float32)
    det_fast, _ = fast.predict([image])
    det_exact, _ = exact.predict([image])
    n = min(len(det_fast[0]["scores"]), len(det_exact[0]["scores"]), 5)
    assert n > 0
    assert np.allclose(det_fast[0]["scores"][:n], det_exact[0]["scores"][:n], atol=5e-3)
    with pytest.raises(SettingsError, match="XSCREEN_LA_BF16"):
        load_settings(la_bf16="maybe")
