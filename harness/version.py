"""The project's name and version, below everything else so that any module may read them."""

PROJECT_NAME = "harness"

__version__ = "0.1.0"
