"""Every hook is documented and exercised by a test; the README's commands are what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from harness import hookspecs

REPO = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name in vars(hookspecs) if name.startswith("harness_"))


def test_every_hook_has_a_heading_in_plugin_hooks_md():
    headings = set(re.findall(r"^## (harness_\w+)$", (REPO / "docs" / "plugin_hooks.md").read_text(),
                              re.MULTILINE))
    assert headings == set(HOOKS)


def test_every_hook_is_used_by_a_test():
    tests = "".join(p.read_text() for p in (REPO / "tests").glob("*.py") if p.name != "test_docs.py")
    untested = [hook for hook in HOOKS if f"def {hook}(" not in tests]
    assert untested == []


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest" in readme and "\npython -m pytest" in ci
    assert "harness run suites/quickstart.toml" in readme
