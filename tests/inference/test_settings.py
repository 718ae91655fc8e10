"""The settings of the detection pipeline (``xscreen detect``; the service's Settings extends them)."""

from __future__ import annotations

import pytest

from xscreen.inference.settings import SettingsError, bundled_weights_path, load_inference_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("XSCREEN_"):
            monkeypatch.delenv(name)


def test_models_directory_selects_the_weights_and_service_variables_are_ignored(monkeypatch, tmp_path):
    (tmp_path / "site-1.2.safetensors").write_bytes(b"not read here")
    monkeypatch.setenv("XSCREEN_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("XSCREEN_MODEL_NAME", "site-1.2")
    monkeypatch.setenv("XSCREEN_HOST", "0.0.0.0")  # the service's: refused there without a key, unread here
    monkeypatch.setenv("XSCREEN_DEVICE", "CPU")
    s = load_inference_settings(score_threshold=0.25, max_pixels=None)  # None: flag not given
    assert s.weights == tmp_path / "site-1.2.safetensors" and s.device == "cpu"
    assert s.score_threshold == 0.25 and s.max_pixels == 25_000_000
    monkeypatch.delenv("XSCREEN_MODELS_DIR")
    monkeypatch.delenv("XSCREEN_MODEL_NAME")
    assert load_inference_settings().weights == bundled_weights_path()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"score_threshold": 1.5}, "XSCREEN_SCORE_THRESHOLD"),
        ({"max_pixels": 1}, "XSCREEN_MAX_PIXELS"),
        ({"backend": "onnxruntime"}, "needs XSCREEN_ONNX_PATH"),
        ({"model_name": "site"}, "need XSCREEN_MODELS_DIR"),
    ],
)
def test_bad_values_give_one_line_naming_the_variable(overrides, fragment):
    with pytest.raises(SettingsError) as info:
        load_inference_settings(**overrides)
    message = str(info.value)
    assert message.startswith("invalid settings: ") and fragment in message and "\n" not in message
