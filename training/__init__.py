"""Data (scan conversion, CLCXray loader, synthetic scanner), training and evaluation."""
