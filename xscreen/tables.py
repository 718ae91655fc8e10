"""Markdown tables, the one format every xscreen report and benchmark prints (to paste into notes)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_RULES = {"l": "---", "r": "---:"}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> str:
    """The rows as a markdown table under ``header``; cells are written with ``str``.

    ``align`` has one letter per column, ``l`` (left) or ``r`` (right, for numbers); by default the
    first column is left-aligned and the others right-aligned.
    """
    n = len(header)
    align = align if align is not None else "l" + "r" * (n - 1)
    if len(align) != n or set(align) - set(_RULES):
        raise ValueError(f"align {align!r}: need one of 'l'/'r' for each of the {n} columns")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(_RULES[a] for a in align) + "|"]
    for i, row in enumerate(rows):
        if len(row) != n:
            raise ValueError(f"row {i} has {len(row)} cells for {n} columns: {list(row)!r}")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
