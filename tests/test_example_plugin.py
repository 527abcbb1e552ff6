"""The example third-party package (examples/harness-plugin-example), installed as the
README's test command installs it: listed by `harness plugins`, usable from a suite, and
declared by the suite's `requires`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from harness.cli import main

from .conftest import REPO, small_suite

EXAMPLE = REPO / "examples" / "harness-plugin-example"


def test_harness_plugins_lists_it_with_version_and_hooks():
    done = subprocess.run([sys.executable, "-m", "harness", "plugins", "--json"],
                          capture_output=True, text=True, check=True)
    [plugin] = [p for p in json.loads(done.stdout)["plugins"] if p["name"] == "example"]
    assert plugin["distribution"] == "harness-plugin-example" and plugin["version"] == "0.1.0"
    assert plugin["hooks"] == ["harness_register_evaluators", "harness_register_reporters"]
    assert plugin["components"] == {"evaluator": ["example/json-match"],
                                    "reporter": ["example/csv"]}
    assert plugin["error"] is None


def test_its_suite_runs_with_its_evaluator_and_reporter(tmp_path):
    """The package's own suite, on the tiny model: `harness run` from the command line."""
    suite = tmp_path / "suite.toml"
    text = (EXAMPLE / "suite.toml").read_text().replace("builtin:smollm2-135m-instruct",
                                                         "builtin:tiny-random")
    suite.write_text(text.replace('data = "data/', f'data = "{EXAMPLE}/data/'))
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(suite)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    csv = tmp_path / "results" / "json-example-leaderboard.csv"
    assert f"leaderboard written to {csv}" in done.stdout.replace("\n", "")
    header, row = csv.read_text().splitlines()
    assert header == "model,variant,method,evaluator,role,metric,value,stderr,n"
    assert row.startswith("smollm2-135m,base,base,json,target,exact_match,")


@pytest.mark.parametrize(("requirement", "message"), [
    ("harness-plugin-example>=9", "harness-plugin-example>=9 is needed, harness-plugin-example "
                                  "0.1.0 is installed"),
    ("harness-plugin-nowhere>=0.1", "harness-plugin-nowhere>=0.1 is not installed "
                                    "(pip install 'harness-plugin-nowhere>=0.1')"),
    ("not a requirement!", "'not a requirement!' is not a requirement"),
])
def test_unmet_requires_is_one_clear_error_before_anything_runs(tmp_path, requirement, message):
    suite = small_suite(tmp_path)
    suite.write_text(suite.read_text().replace(
        'seed = 0', f'seed = 0\nrequires = ["harness-plugin-example>=0.1", {json.dumps(requirement)}]'))
    result = CliRunner().invoke(main, ["run", str(suite)])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"harness: error: {suite}: [suite] field 'requires': {message}")
    assert not (tmp_path / "results").exists()
