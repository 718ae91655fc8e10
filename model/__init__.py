"""Detector: ATSS R-50-FPN with the Label-aware heads (LAcls, LAreg)."""
