"""xscreen: threat detection on dual-energy X-ray scans (ATSS + Label-aware Mechanism)."""

__version__ = "0.1.0"
