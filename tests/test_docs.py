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


def _commands(text: str) -> list[str]:
    """Shell commands, with pip's quiet and version-check flags and `python -m` left out."""
    commands = []
    for part in re.split(r"&&|\n", text):
        words = [w for w in part.split() if w not in ("-q", "--disable-pip-version-check")]
        if words[:2] == ["python", "-m"]:
            words = words[2:]
        if words and not words[0].startswith("#"):
            commands.append(" ".join(words).split(" #")[0])
    return commands


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    block = readme.split("Tests:", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    wanted = _commands(block)
    assert wanted[-1] == "pytest --cov" and any(w.startswith("pip install") for w in wanted)
    assert [c for c in _commands(ci) if c in wanted] == wanted  # the same commands, in order
    assert "harness run suites/quickstart.toml" in readme


def test_ci_runs_the_readme_vllm_command():
    """The vLLM target's command in the README is the one CI runs."""
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    block = readme.split("`.ci/run` runs them after the", 1)[1].split("```bash", 1)[1]
    wanted = _commands(block.split("```", 1)[0])
    assert wanted == ["bash scripts/vllm-cpu-venv", ".venv-vllm/bin/python -m pytest tests_vllm"]
    assert [c for c in _commands(ci) if c in wanted] == wanted
