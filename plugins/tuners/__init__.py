"""Tuning methods."""
