"""Evaluators: what a base or variant is scored on."""
