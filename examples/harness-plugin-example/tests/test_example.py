"""The example plugin's tests: harness's pytest plugin (harness.testing) gives the tiny model,
a backend holding it, and in-process suite runs, so each test is a few lines."""

from __future__ import annotations

import csv

from harness import EvaluatorSpec
from harness.testing import write_jsonl

from harness_plugin_example.json_match import JsonMatchEvaluator, JsonMatchOptions, first_json_object

ROWS = [{"id": f"r{i}", "prompt": f"Return JSON with key n holding {i}.", "expected": {"n": i}}
        for i in range(3)]


def test_first_json_object_is_found_inside_prose():
    assert first_json_object('Sure! ```json\n{"city": "Paris"}\n``` done') == {"city": "Paris"}
    assert first_json_object("{not json} then {\"a\": 1}") == {"a": 1}
    assert first_json_object("no object [1, 2]") is None


def test_metrics_agree_with_the_samples(tmp_path, tiny_backend):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    spec = EvaluatorSpec("json", "example/json-match", "target", str(data), 0)
    result = JsonMatchEvaluator(spec, JsonMatchOptions(max_new_tokens=8)).evaluate(tiny_backend)
    metrics = {m.name: m.value for m in result.metrics}
    assert metrics["exact_match"] == sum(s.score for s in result.samples) / len(ROWS)
    assert metrics["valid_json"] == sum(s.extra["parsed"] is not None for s in result.samples) / 3
    assert [s.item_id for s in result.samples] == ["r0", "r1", "r2"]


def test_a_suite_runs_the_evaluator_and_writes_the_csv(tmp_path, run_harness):
    write_jsonl(tmp_path / "data" / "rows.jsonl", ROWS)
    run = run_harness("""
[suite]
name = "example"
store = "results/example.duckdb"
requires = ["harness-plugin-example>=0.1"]
reporters = ["example/csv"]

[[models]]
name = "tiny"
source = "builtin:tiny-random"

[[evaluators]]
name = "json"
kind = "example/json-match"
data = "data/rows.jsonl"
options = { max_new_tokens = 8 }
""")
    assert (run.summary.done, run.summary.failed) == (1, 0)
    assert run.query("SELECT metric FROM metrics ORDER BY metric") == [
        ("exact_match",), ("field_accuracy",), ("valid_json",)]
    with (tmp_path / "results" / "example-leaderboard.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [(r["variant"], r["evaluator"], r["metric"], r["role"]) for r in table] == [
        ("base", "json", "exact_match", "target")]
