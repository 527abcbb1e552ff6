"""Executors: where units of work run."""
