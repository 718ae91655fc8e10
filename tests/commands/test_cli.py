"""The console command's own behaviour: help, version, unknown commands."""

import subprocess
import sys
from pathlib import Path

from xscreen import __version__
from xscreen.cli import main


def test_version_flag(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: xscreen" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error():
    proc = subprocess.run(
        [sys.executable, "-m", "xscreen.cli", "no-such-command"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_every_subcommand_without_loading_torch():
    code = (
        "import sys; from xscreen.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported for --help'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("serve", "detect", "train", "export", "synth", "render", "eval"):
        assert f"    {name} " in proc.stdout


def test_each_subcommand_help_has_its_own_options():
    for name, flag in (("synth", "--images"), ("eval", "--weights"), ("train", "--config")):
        proc = subprocess.run(
            [sys.executable, "-m", "xscreen.cli", name, "--help"], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert flag in proc.stdout


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xscreen.cli", *args], capture_output=True, text=True)


def test_unknown_option_is_named_after_the_subcommand():
    proc = _run("serve", "--bogus", "--port", "5")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "xscreen serve: error: unrecognized arguments: --bogus"
    top = _run("--bogus")
    assert top.returncode == 2 and "xscreen: error: unrecognized arguments: --bogus" in top.stderr


def test_no_abbreviations_and_no_secret_in_the_error():
    # "--api-keys" is no flag of serve; it must not be taken as --api-keys-file, nor its value echoed
    secret = "s3cret-key-0123456789abcdef"
    proc = _run("serve", "--api-keys", secret)
    assert proc.returncode == 2
    assert secret not in proc.stderr and secret not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "xscreen serve: error: unrecognized arguments: --api-keys (and 1 value(s), not shown)"
    inline = _run("serve", f"--api-key={secret}")
    assert inline.returncode == 2 and secret not in inline.stderr
    assert "unrecognized arguments: --api-key" in inline.stderr


def test_detect_prints_detections_without_loading_the_service():
    """`xscreen detect` runs the detection pipeline below the service: neither FastAPI nor any
    xscreen.service module is imported (the import-linter contract in pyproject.toml says the same).
    The sample bag of examples/ with the bundled weights, at their own threshold."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    argv = ["detect", "--high", str(examples / "bag_high.png"), "--low", str(examples / "bag_low.png")]
    argv += ["--device", "cpu"]
    code = (
        "import sys\nfrom xscreen.cli import main\n"
        f"code = main({argv!r})\n"
        "loaded = [m for m in sys.modules if m == 'fastapi' or m.startswith('xscreen.service')]\n"
        "print('LOADED', sorted(loaded))\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "LOADED []"
    head = lines[0].split()
    assert head[1:5] == ["detection(s)", "in", "256x256", "scan"], lines[0]
    assert lines[0].endswith(" s): ALARM"), lines[0]  # the alarm decision, as in the JSON's "alarm"
    found = int(head[0])
    # the bag holds a knife, a swiss army knife and scissors (examples/bag_truth.json)
    assert found >= 3 and len(lines) == 1 + found + 1  # the scan line, one per detection, LOADED
    names = " ".join(lines[1:-1])
    for name in ("knife", "scissors"):
        assert name in names, lines
