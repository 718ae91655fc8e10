"""User-facing error type shared by every xscreen module (the CLI prints it without a traceback), and the
message for a file this process may not read."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class XscreenError(Exception):
    """A problem with the user's input (file, flag, config, weights) that deserves a clear message.

    Subclasses name the domain (``ScanError``, ``WeightsError``, ...). The CLI catches this
    class, prints ``xscreen <command>: error: <message>`` and exits with status 2.
    """


def permission_denied(path: str | os.PathLike) -> str | None:
    """The message when this process may not open ``path`` for reading ("<path>: permission denied: uid N
    needs read access to it (...)", with the file's owner and mode); None when it may, or when the open
    fails for another reason (a missing file, a folder), which the caller reports its own way.

    A container's service user (uid 10001 in the image) reading a model file mounted from the host with
    mode 0600 is the case this is for: without it, libraries report the failed open as a missing file.
    """
    try:
        with open(path, "rb"):
            return None
    except PermissionError:
        pass
    except OSError:
        return None
    uid = os.geteuid()
    try:
        st = os.stat(path)
        whose = f"the file has owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"
    except OSError:
        whose = f"a folder above it is not searchable by uid {uid}"
    return f"{Path(path)}: permission denied: uid {uid} needs read access to it ({whose})"
