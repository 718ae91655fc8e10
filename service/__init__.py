"""FastAPI inference service for dual-energy scans."""

if __name__ != "xscreen.service":  # the folder's bare name, e.g. from the repository root
    raise ImportError("import xscreen.service, not service: service/ is the package xscreen.service")
