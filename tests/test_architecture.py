"""The core's shape: layers with arrows pointing down, modules of one job and modest size,
plugins that import only the public API and their own kind's shared helpers."""

from __future__ import annotations

import ast
import shutil
import subprocess

import grimp
import pytest

import harness
from harness.plugins import BUILTIN_PLUGINS

from .conftest import REPO


def test_import_contracts_hold():
    """``lint-imports`` (import-linter, contracts in pyproject.toml): every core module imports
    only layers below its own, function-level imports included, so no circle can form."""
    command = shutil.which("lint-imports")
    assert command, "import-linter is part of the test extra"
    done = subprocess.run([command, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert "0 broken" in done.stdout


def test_no_core_module_imports_the_package_root():
    """``harness/__init__.py`` imports the rest; a module importing it back would be a circle
    that the layers cannot see."""
    graph = grimp.build_graph("harness")
    importers = sorted(m for m in graph.modules if "harness" in
                       graph.find_modules_directly_imported_by(m))
    assert importers == []


def test_every_core_module_is_modest():
    sizes = {str(path.relative_to(REPO)): len(path.read_text().splitlines())
             for path in (REPO / "harness").rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 350} == {}


def _imports(path):
    """Every module a file imports (``from x import y`` as x and as x.y), with line numbers."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _plugin_files():
    files = sorted((REPO / "plugins").rglob("*.py"))
    example = REPO / "examples" / "harness-plugin-example" / "harness_plugin_example"
    return files + sorted(example.rglob("*.py"))


def test_plugins_import_only_the_public_api_and_their_own_kinds_helpers():
    public = set(harness.__all__)
    plugin_modules = set(BUILTIN_PLUGINS)
    problems = []
    for path in _plugin_files():
        relative = path.relative_to(REPO)
        kind = relative.parts[1] if relative.parts[0] == "plugins" else None
        for line, name in _imports(path):
            parts = name.split(".")
            where = f"{relative}:{line}"
            if parts[0] == "harness" and len(parts) > 1 and parts[1] not in public:
                problems.append(f"{where}: imports the private host module {name}")
            if parts[0] == "harness_plugins" and len(parts) > 2:
                module = ".".join(parts[:3])
                if parts[1] != kind:
                    problems.append(f"{where}: imports {module}, another kind's module")
                elif module in plugin_modules:
                    problems.append(f"{where}: imports {module}, a sibling plugin")
    assert problems == []


def test_the_import_check_catches_a_private_import(tmp_path):
    """The check above can fail: a private host import is reported."""
    path = tmp_path / "bad.py"
    path.write_text("from harness.store import query\nimport harness\n")
    names = [name for _, name in _imports(path)]
    assert "harness.store" in names and "harness.store.query" in names
    assert "store" not in harness.__all__


@pytest.mark.parametrize("name", harness.__all__)
def test_every_public_name_exists_and_is_documented(name):
    assert hasattr(harness, name)
    docs = (REPO / "docs" / "plugin_hooks.md").read_text()
    assert f"harness.{name}" in docs or f"`{name}`" in docs, \
        f"docs/plugin_hooks.md does not mention harness.{name}"
