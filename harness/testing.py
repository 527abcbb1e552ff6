"""Fixtures for testing harness plugins, as a pytest plugin (entry point ``pytest11``).

Installed with harness, so in any project that has harness installed these fixtures are
available to tests without an import:

``harness_cache`` (session)
    a temporary model cache (``HARNESS_CACHE``), so tests never touch ``~/.cache``.
``tiny_model`` (session)
    the built-in ``tiny-random`` model (a 2-layer Llama with a locally trained
    tokenizer) as a :class:`~harness.ResolvedModel`; built in about a second.
``harness_builtin_host`` (session)
    a :class:`~harness.plugins.PluginHost` with the built-in plugins only.
``tiny_backend`` (module)
    the ``hf`` backend holding ``tiny_model`` with its base active: call an evaluator's
    ``evaluate(tiny_backend)`` directly.
``harness_store`` (function)
    a path for a temporary DuckDB store.
``run_harness`` (function)
    ``run_harness(suite_text, plugins=[...])`` writes the suite into the test's temporary
    folder, runs it in-process with those plugin objects registered (besides the installed
    ones), and returns a :class:`HarnessRun`: the summary, the store path and ``query``.

Paths in the suite text are relative to the test's temporary folder; ``write_jsonl``
puts data there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.records import ResolvedModel, Variant


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    """Write rows as JSONL (creating folders); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@dataclass
class HarnessRun:
    summary: Any  # harness.RunSummary
    store: Path
    folder: Path

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        """Rows of a read-only query on the run's store."""
        from harness.store.reader import query

        return query(self.store, sql, list(params))[1]


@pytest.fixture(scope="session")
def harness_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterable[Path]:
    cache = tmp_path_factory.mktemp("harness-cache")
    previous = os.environ.get("HARNESS_CACHE")
    os.environ["HARNESS_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("HARNESS_CACHE", None)
    else:
        os.environ["HARNESS_CACHE"] = previous


@pytest.fixture(scope="session")
def harness_builtin_host() -> Any:
    """A plugin host with the built-ins only, shared by the fixtures below."""
    from harness.plugins import PluginHost

    return PluginHost.load(entry_points=False)


@pytest.fixture(scope="session")
def tiny_model(harness_cache: Path, harness_builtin_host: Any) -> ResolvedModel:
    from harness.models import resolve_reference

    # the built-in model source, asked for by name, as a suite's `source` would
    return resolve_reference("tiny", "builtin:tiny-random", harness_builtin_host, harness_cache)


@pytest.fixture(scope="session")
def tiny_model_path(tiny_model: ResolvedModel) -> Path:
    return tiny_model.path


@pytest.fixture(scope="module")
def tiny_backend(tiny_model: ResolvedModel, harness_builtin_host: Any) -> Iterable[Any]:
    backend = harness_builtin_host.build("backend", "hf", {"batch_size": 4})
    backend.load(tiny_model)
    backend.activate(Variant("base", "base", tiny_model, "base"))
    yield backend
    backend.close()


@pytest.fixture()
def harness_store(tmp_path: Path) -> Path:
    return tmp_path / "results" / "test.duckdb"


@pytest.fixture()
def run_harness(tmp_path: Path, harness_cache: Path) -> Callable[..., HarnessRun]:
    from rich.console import Console

    from harness.plugins import PluginHost
    from harness.runner import run_suite

    def run(suite_text: str, plugins: Iterable[Any] = (), *,
            entry_points: bool = True) -> HarnessRun:
        path = tmp_path / "suite.toml"
        path.write_text(suite_text, encoding="utf-8")
        host = PluginHost.load(entry_points=entry_points, extra_plugins=list(plugins))
        with open(os.devnull, "w") as quiet:
            summary = run_suite(path, host=host, console=Console(file=quiet),
                                show_progress=False)
        return HarnessRun(summary, summary.store_path, tmp_path)

    return run
