"""Model sources: where base models come from."""
