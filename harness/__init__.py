"""harness: tune language models, evaluate base and variants alike, store it all in DuckDB."""

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "harness"

#: Decorator for plugin hook implementations: ``@harness.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["__version__", "hookimpl", "PROJECT_NAME"]
