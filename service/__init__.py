"""FastAPI inference service for dual-energy scans."""
