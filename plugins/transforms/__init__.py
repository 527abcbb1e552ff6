"""Transforms: variants made of variants without training."""
