"""docs/training.md's recipe for retraining on the site's reviews, as the commands the tests run or parse."""

from __future__ import annotations

import re
from pathlib import Path

TRAINING_DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"
MARKER = "<!-- review recipe:"


def review_recipe() -> list[str]:
    """The recipe block's commands, one string each (continuation lines joined, comments dropped)."""
    text = TRAINING_DOC.read_text()
    block = re.search(re.escape(MARKER) + r"[^\n]*-->\n```bash\n(.*?)```", text, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [" ".join(ln.split()) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
