"""The benchmark evaluator stores what lm-eval itself computes, and HF generation is sound."""

from __future__ import annotations

import pytest

from harness import EvaluatorSpec
from harness.errors import DataError
from harness_plugins.evaluators.benchmark import (
    BenchmarkEvaluator,
    BenchmarkOptions,
    task_config_for_jsonl,
)

from .conftest import MC_ROWS, write_jsonl

GEN_ROWS = [{"id": f"g{i}", "question": f"Say the number {i}.", "answer": str(i)}
            for i in range(4)]


def _reference(tiny_model, config):
    """lm-eval on its own: a fresh HFLM loaded from the folder, simple_evaluate on the config."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tiny_model.path), device="cpu", batch_size=4, dtype="float32")
    return simple_evaluate(model=lm, tasks=[config], log_samples=True, verbosity="ERROR",
                           random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                           fewshot_random_seed=0)


@pytest.mark.parametrize("rows", [MC_ROWS, GEN_ROWS], ids=["multiple_choice", "generation"])
def test_metrics_equal_lm_eval_simple_evaluate(tmp_path, tiny_model, backend, rows):
    data = write_jsonl(tmp_path / "task.jsonl", rows)
    spec = EvaluatorSpec("task", "benchmark", "general", str(data), 0)
    result = BenchmarkEvaluator(spec, BenchmarkOptions()).evaluate(backend)

    reference = _reference(tiny_model, task_config_for_jsonl("task", data, BenchmarkOptions()))
    expected = reference["results"]["harness_task"]
    stored = {m.name: (m.value, m.stderr) for m in result.metrics}
    for key, value in expected.items():
        metric, _, filter_name = key.partition(",")
        if not filter_name or metric.endswith("_stderr"):
            continue
        name = metric if filter_name == "none" else key
        assert stored[name][0] == value, key
        assert stored[name][1] == expected[f"{metric}_stderr,{filter_name}"]
    assert len(result.samples) == len(rows)
    assert [s.item_id for s in result.samples] == [r["id"] for r in rows]
    assert sum(1 for m in result.metrics if m.primary) == 1


def test_multiple_choice_samples_keep_choice_log_likelihoods(tmp_path, backend):
    data = write_jsonl(tmp_path / "mc.jsonl", MC_ROWS)
    spec = EvaluatorSpec("mc", "benchmark", "general", str(data), 0)
    result = BenchmarkEvaluator(spec, BenchmarkOptions(limit=3)).evaluate(backend)
    assert len(result.samples) == 3
    for sample in result.samples:
        assert len(sample.logprobs) == 4
        best = max(range(4), key=sample.logprobs.__getitem__)
        assert sample.score == float(best == 0)
        assert sample.prompt.startswith("Question: What is")


def test_mixed_rows_are_rejected_with_the_line(tmp_path):
    data = write_jsonl(tmp_path / "mixed.jsonl", MC_ROWS[:2] + GEN_ROWS[:1])
    with pytest.raises(DataError, match=r"mixed.jsonl:3: field 'choices': mixes"):
        task_config_for_jsonl("x", data, BenchmarkOptions())


def test_batched_generation_equals_one_at_a_time(backend):
    prompts = ["The capital of", "One two three four five six seven", "Hello"]
    together = backend.generate(prompts, max_new_tokens=6)
    backend.options.batch_size = 1
    try:
        alone = [backend.generate([p], max_new_tokens=6)[0] for p in prompts]
    finally:
        backend.options.batch_size = 4
    assert together == alone
    assert all(isinstance(text, str) for text in together)


def test_few_shot_and_batch_size_reach_lm_eval(tmp_path, tiny_model, backend):
    """num_fewshot, limit and batch_size pass through: the stored metrics equal lm-eval's own
    run with the same settings, and the backend's batch size is restored afterwards."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    data = write_jsonl(tmp_path / "task.jsonl", MC_ROWS)
    options = BenchmarkOptions(num_fewshot=2, limit=4, batch_size=1)
    spec = EvaluatorSpec("task", "benchmark", "general", str(data), 0)
    result = BenchmarkEvaluator(spec, options).evaluate(backend)
    assert backend.lm_eval_model().batch_size_per_gpu == 4
    assert all(s.prompt.count("Question:") == 3 for s in result.samples)  # two shots + the item

    lm = HFLM(pretrained=str(tiny_model.path), device="cpu", batch_size=1, dtype="float32")
    reference = simple_evaluate(model=lm, tasks=[task_config_for_jsonl("task", data, options)],
                                num_fewshot=2, limit=4, verbosity="ERROR", random_seed=0,
                                numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    expected = reference["results"]["harness_task"]
    stored = {m.name: m.value for m in result.metrics}
    assert stored["acc"] == expected["acc,none"] and stored["acc_norm"] == expected["acc_norm,none"]
    assert len(result.samples) == 4


def test_lm_eval_task_without_its_data_names_task_and_dataset(backend):
    spec = EvaluatorSpec("hs", "benchmark", "general", "lm_eval:hellaswag", 0)
    with pytest.raises(RuntimeError, match=r"lm-eval task 'hellaswag' could not run: .*Rowan/hellaswag"):
        BenchmarkEvaluator(spec, BenchmarkOptions(limit=2)).evaluate(backend)


REFERENCE = r"""
import json, sys
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
lm = HFLM(pretrained=sys.argv[1], device="cpu", batch_size=4, dtype="float32")
out = simple_evaluate(model=lm, tasks=["arc_easy"], verbosity="ERROR", random_seed=0,
                      numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
print(json.dumps(out["results"]["arc_easy"]))
"""


def test_lm_eval_task_by_name_runs_where_its_data_loads(tmp_path, tiny_model):
    """`harness run` with data = "lm_eval:arc_easy": lm-eval finds the task by name and its
    dataset (allenai/ai2_arc, written here into an offline cache); the stored metrics equal
    lm-eval's own run."""
    import json
    import os
    import subprocess
    import sys

    from harness.store import query

    from .offline_datasets import arc_rows, install_offline_dataset

    rows = arc_rows()
    env = {**os.environ, **install_offline_dataset(
        tmp_path, "allenai/ai2_arc", "ARC-Easy", {"train": rows, "validation": rows, "test": rows})}
    suite = tmp_path / "arc.toml"
    suite.write_text(f"""
[suite]
name = "arc"
store = "arc.duckdb"

[[models]]
name = "tiny"
source = "{tiny_model.path}"

[[evaluators]]
name = "arc"
kind = "benchmark"
data = "lm_eval:arc_easy"
""")
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(suite)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    _, stored = query(tmp_path / "arc.duckdb", "SELECT metric, value, stderr, n FROM metrics")
    reference = json.loads(subprocess.run(
        [sys.executable, "-c", REFERENCE, str(tiny_model.path)], env=env, capture_output=True,
        text=True, check=True).stdout.strip().splitlines()[-1])
    values = {metric: (value, stderr, n) for metric, value, stderr, n in stored}
    assert values["acc"][:2] == (reference["acc,none"], reference["acc_stderr,none"])
    assert values["acc_norm"][:2] == (reference["acc_norm,none"], reference["acc_norm_stderr,none"])
    assert values["acc"][2] == len(rows)
    _, outputs = query(tmp_path / "arc.duckdb", "SELECT item_id, output FROM samples ORDER BY item_index")
    texts = {row["id"]: row["choices"]["text"] for row in rows}
    assert len(outputs) == len(rows) and all(out in texts[item] for item, out in outputs)
