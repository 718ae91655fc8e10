"""A file that a child process may not read, on a machine where tests run as root (which reads anything)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# setpriv drops the two capabilities that let root read any file; the child keeps uid 0 otherwise
NO_DAC = ("--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search")


def make_unreadable(path: Path) -> tuple[tuple[str, ...], str]:
    """Make ``path`` unreadable to a child started with the returned command prefix; also returns what its
    permission message must say about the file. As root: the file belongs to uid 10001 (the image's
    service user), mode 0600, and the child runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH. As any
    other user: mode 0000, no prefix. Either way the child's open() gets a real EACCES."""
    if os.geteuid() != 0:
        path.chmod(0)
        return (), "mode 0000"
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to test an unreadable file as root")
    os.chown(path, 10001, 10001)
    path.chmod(0o600)
    return (setpriv, *NO_DAC), "owner uid 10001, mode 0600"
