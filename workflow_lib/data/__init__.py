"""Data files written for this project (harmless instructions)."""
