"""Peak-memory probes for hostile-input tests: a real server process's VmHWM, reset before each probe.

``with PeakRss(pid) as peak: ...`` resets the process's high-water mark (``/proc/<pid>/clear_refs``, value
5), remembers its resident size, and afterwards ``peak.growth_mb`` is VmHWM minus that starting VmRSS: the
most memory the probe made the server hold at any moment, not only what it still holds at the end.
"""

from __future__ import annotations

from pathlib import Path


def proc_status_kb(pid: int, field: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM, ...) of /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Set VmHWM back to the current VmRSS (Linux clear_refs; needs the same user or root)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class PeakRss:
    def __init__(self, pid: int):
        self.pid = pid
        self.start_kb = 0
        self.peak_kb = 0

    def __enter__(self) -> PeakRss:
        reset_peak(self.pid)
        self.start_kb = proc_status_kb(self.pid, "VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.peak_kb = proc_status_kb(self.pid, "VmHWM")

    @property
    def growth_mb(self) -> float:
        return (self.peak_kb - self.start_kb) / 1024.0
