"""DICOS (NEMA IIC 1) files: a dual-energy pair of DX images in, a Threat Detection Report (TDR) out.

``files``: the Part 10 layer both use (SOP classes, transfer syntaxes, parsing, the written dataset's
skeleton); ``dx``: DX images read and written; ``tdr``: threat reports written and read. docs/dicos.md
lists every tag.
"""
