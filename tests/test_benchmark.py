"""The benchmark evaluator stores what lm-eval itself computes, and HF generation is sound."""

from __future__ import annotations

import pytest

from harness.components import EvaluatorSpec, Variant
from harness.errors import DataError
from harness_plugins.backends.hf import HFBackend, HFOptions
from harness_plugins.evaluators.benchmark import (
    BenchmarkEvaluator,
    BenchmarkOptions,
    task_config_for_jsonl,
)

from .conftest import MC_ROWS, write_jsonl

GEN_ROWS = [{"id": f"g{i}", "question": f"Say the number {i}.", "answer": str(i)}
            for i in range(4)]


@pytest.fixture(scope="module")
def backend(tiny_model):
    backend = HFBackend(HFOptions(batch_size=4))
    backend.load(tiny_model)
    backend.activate(Variant("base", "k", tiny_model, "base"))
    yield backend
    backend.close()


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
