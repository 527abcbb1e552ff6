"""The benchmark evaluator stores what lm-eval itself computes, and HF generation is sound."""

from __future__ import annotations

import pytest

from harness import EvaluatorSpec
from harness.errors import DataError
from harness_plugins.evaluators.benchmark import (
    ENVIRONMENT_NOT_COLLECTED,
    BenchmarkEvaluator,
    BenchmarkOptions,
    _decontamination_query,
    _without_environment_report,
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
        # the question alone, as its own field: stored once per item, not in every cell's extra
        assert sample.query == sample.prompt.removeprefix("Question: ").removesuffix("\nAnswer:")
        assert "decontamination_query" not in sample.extra


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


# Questions that a Jinja template and an f-string could render differently if either
# touched the text: template syntax, escapes, markup, newlines, blanks, digits, unicode.
AWKWARD = ["{{ question }} and {% raw %}x{% endraw %}", "a {# comment #} b", "<b>bold</b> & 'q'",
           "line one\nline two\n", "ends with CRLF\r\n", "  padded  ", "12345", "\\n literal",
           "Ünïcödé — ✓ 東京", "tab\there", "{{", "}}"]


def _generated_items(n: int) -> list[dict]:
    words = "the of river island capital north south king war lake city treaty".split()
    rows = []
    for i in range(n):
        question = (AWKWARD[i] if i < len(AWKWARD)
                    else " ".join(words[(i * k) % len(words)] for k in range(1, 3 + i % 9)) + "?")
        rows.append({"id": f"q{i}", "question": question,
                     "choices": [f"{words[(i + j) % len(words)]} {j}" for j in range(4)],
                     "answer": i % 4})
    return rows


def _per_item(output: dict, task: str) -> list[tuple]:
    return [(s["doc_id"], s["arguments"], s["filtered_resps"], s["acc"], s["acc_norm"])
            for s in output["samples"][task]]


@pytest.mark.parametrize("num_fewshot", [0, 2], ids=["zero_shot", "two_shot"])
def test_functions_config_scores_every_item_as_the_jinja_config(tmp_path, backend, num_fewshot):
    """The config the harness builds (its prompt a function, read without lm-eval's
    per-document template compile) gives lm-eval the same requests as the YAML-style Jinja
    config, and the same per-item scores and metrics, on a few hundred items."""
    from lm_eval import simple_evaluate

    from harness_plugins.evaluators.benchmark import task_manager

    n = 300 if num_fewshot == 0 else 60
    data = write_jsonl(tmp_path / "items.jsonl", _generated_items(n))
    outputs = {}
    for templates in (True, False):
        config = task_config_for_jsonl("same", data, BenchmarkOptions(), templates=templates)
        assert callable(config["doc_to_text"]) is not templates
        outputs[templates] = simple_evaluate(
            model=backend.lm_eval_model(), tasks=[config], task_manager=task_manager(None, False),
            num_fewshot=num_fewshot, log_samples=True, verbosity="ERROR", random_seed=0,
            numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    jinja, functions = (_per_item(outputs[t], "harness_same") for t in (True, False))
    assert len(jinja) == n and functions == jinja
    assert outputs[False]["results"] == outputs[True]["results"]
    if num_fewshot == 0:
        prompts = [s["arguments"][0][0] for s in outputs[False]["samples"]["harness_same"]]
        assert prompts[:len(AWKWARD)] == [f"Question: {q}\nAnswer:" for q in AWKWARD]


def test_decontamination_query_is_the_question_for_either_config(tmp_path):
    data = write_jsonl(tmp_path / "items.jsonl", _generated_items(40))
    docs = _generated_items(40)
    queries = [_decontamination_query(task_config_for_jsonl("x", data, BenchmarkOptions(),
                                                            templates=templates))
               for templates in (True, False)]
    assert [queries[0](d) for d in docs] == [queries[1](d) for d in docs] == [d["question"] for d in docs]
    other = _decontamination_query({"should_decontaminate": True,
                                    "doc_to_decontamination_query": "{{question}} / {{id}}"})
    assert other(docs[20]) == f"{docs[20]['question']} / q20"
    assert other({"question": "no id"}) is None  # a template this document cannot fill
    assert _decontamination_query({"doc_to_decontamination_query": "question"}) is None


def test_a_file_is_read_again_when_it_changes(tmp_path):
    """The check at validation and the cell's config read the file once; a file changed in
    between is read again, and its error still names the line."""
    data = write_jsonl(tmp_path / "task.jsonl", MC_ROWS)
    assert task_config_for_jsonl("x", data, BenchmarkOptions())["output_type"] == "multiple_choice"
    write_jsonl(data, MC_ROWS[:2] + GEN_ROWS[:1])
    with pytest.raises(DataError, match=r"task.jsonl:3: field 'choices': mixes"):
        task_config_for_jsonl("x", data, BenchmarkOptions())
    write_jsonl(data, GEN_ROWS)
    assert task_config_for_jsonl("x", data, BenchmarkOptions())["output_type"] == "generate_until"
    with pytest.raises(DataError, match="cannot read"):
        task_config_for_jsonl("x", tmp_path / "missing.jsonl", BenchmarkOptions())


def test_environment_report_is_skipped_only_during_the_call():
    """lm-eval's closing environment report (a few subprocesses, seconds per cell) is
    skipped while the harness calls it, and lm-eval's own function is back afterwards,
    also after an error."""
    import lm_eval.evaluator

    original = lm_eval.evaluator.add_env_info
    with pytest.raises(ValueError):
        with _without_environment_report():
            storage: dict = {}
            lm_eval.evaluator.add_env_info(storage)
            assert storage == {"pretty_env_info": ENVIRONMENT_NOT_COLLECTED}
            raise ValueError
    assert lm_eval.evaluator.add_env_info is original


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
