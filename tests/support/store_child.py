"""A scan store in a process of its own, driven by a list of steps; one JSON-able dict per put or report.

``forked(spec)`` runs the steps in a child forked from the test (its modules already imported, so it
starts at once); ``python -m tests.support.store_child SPEC_JSON`` runs them in a fresh interpreter,
for a child that needs its own namespaces (unshare). The spec: {"store_dir", "database_url", "limits",
"steps"}. Steps: {"wait_for": PATH} (start together), {"chmod": [PATH, MODE]}, {"rlimit_fsize": BYTES},
{"put": {"request_id", "shape": [H, W], "minutes", "seed"}}, {"put_many": {"prefix", "n", "shape"}} (the
i-th at minute i), {"report": 1} (folders, index, usage: what a private mount shows before it goes).
The tests use it for what needs its own process: another replica, a file size limit, a user that may
not write, a private tiny filesystem.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time
import traceback

from tests.support.store_bags import bag
from xscreen.store import ScanStore, StoreConfig


def _put(store: ScanStore, request_id: str, shape, minutes: float, seed: int) -> dict:
    result = store.put_bag(bag(request_id, minutes=minutes, seed=seed, shapes=(tuple(shape),)))
    return {"put": request_id, "stored": result.stored, "reason": result.reason, "detail": result.detail}


def _report(store: ScanStore) -> dict:
    usage = store.usage()
    return {
        "folders": sorted(os.listdir(store.folders.root)),
        "index": sorted(b.request_id for b in store.recent_bags(limit=500).bags),
        "usage": [usage.bags, usage.bytes],
    }


def _step(store: ScanStore, step: dict) -> list[dict]:
    if "wait_for" in step:
        deadline = time.monotonic() + 60
        while not os.path.exists(step["wait_for"]) and time.monotonic() < deadline:
            time.sleep(0.002)
    elif "chmod" in step:
        os.chmod(step["chmod"][0], step["chmod"][1])
    elif "rlimit_fsize" in step:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (step["rlimit_fsize"], step["rlimit_fsize"]))
    elif "report" in step:
        return [_report(store)]
    elif "put" in step:
        p = step["put"]
        return [_put(store, p["request_id"], p.get("shape", (40, 56)), p.get("minutes", 0), p.get("seed", 0))]
    elif "put_many" in step:
        p = step["put_many"]
        return [_put(store, f"{p['prefix']}{i}", p.get("shape", (8, 8)), i, i) for i in range(p["n"])]
    return []


def run_steps(spec: dict, emit) -> None:
    config = StoreConfig(spec["store_dir"], database_url=spec.get("database_url"), **spec.get("limits", {}))
    store = ScanStore(config)
    emit({"ready": store.ready})
    for step in spec["steps"]:
        for line in _step(store, step):
            emit(line)
    store.close()


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_dac_override() -> None:
    """Give up root's power to ignore file modes (capset(2), as `setpriv --inh-caps=-dac_override...` in
    tests/support/unreadable.py): the process keeps uid 0 but obeys modes like any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    keep = ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def forked(spec: dict, obey_modes: bool = False) -> int:
    """Fork a child that runs ``spec``; returns its pid, for ``results(pid)``. ``obey_modes``: as root,
    the child drops CAP_DAC_OVERRIDE first, so that a folder's mode can forbid it to write there."""
    read, write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write)
        _PIPES[pid] = read
        return pid
    code = 1
    try:  # the child: never back into pytest
        os.close(read)
        out = os.fdopen(write, "w")
        if obey_modes and os.geteuid() == 0:
            drop_dac_override()
        run_steps(spec, lambda line: (out.write(json.dumps(line) + "\n"), out.flush()))
        code = 0
    except BaseException:
        with open(write, "w", closefd=False) as err:
            err.write(json.dumps({"error": traceback.format_exc()}) + "\n")
    finally:
        os._exit(code)


_PIPES: dict[int, int] = {}


def results(pid: int) -> list[dict]:
    """The lines of a forked child, once it has ended with status 0."""
    with os.fdopen(_PIPES.pop(pid)) as pipe:
        lines = [json.loads(line) for line in pipe]
    _, status = os.waitpid(pid, 0)
    errors = [line["error"] for line in lines if "error" in line]
    assert os.waitstatus_to_exitcode(status) == 0 and not errors, errors
    return lines


def main() -> int:
    run_steps(json.loads(sys.argv[1]), lambda line: print(json.dumps(line), flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
