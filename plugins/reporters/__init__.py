"""Reporters run at the end of a suite."""
