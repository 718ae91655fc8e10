"""Data (scan conversion, CLCXray loader, synthetic scanner), training and evaluation."""

if __name__ != "xscreen.training":  # the folder's bare name, e.g. from the repository root
    raise ImportError("import xscreen.training, not training: training/ is the package xscreen.training")
