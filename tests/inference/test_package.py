"""``xscreen.inference`` loads its backends on first use: the answer models import without torch."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted(m for m in ('torch', 'fastapi', 'numpy') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def test_the_answer_models_import_without_the_backends():
    assert _loaded_after("import xscreen.inference.response") == []
    assert _loaded_after("import xscreen.inference") == []


def test_the_package_names_still_resolve():
    import xscreen.inference as inference
    from xscreen.inference import backend

    for name in inference.__all__:
        assert getattr(inference, name) is getattr(backend, name)
    assert set(inference.__all__) <= set(dir(inference))
    with pytest.raises(AttributeError, match="no_such_name"):
        inference.no_such_name  # noqa: B018
