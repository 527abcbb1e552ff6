"""`harness run` with the vLLM backend: K LoRA variants of one base on one engine start
(a checkpoint and a merge among them), the same metrics as the hf backend, the path of
every cell in the store, and a planted adapter mismatch failing only that variant's cells."""

from __future__ import annotations

import json

import pytest

from harness.testing import write_jsonl
from harness_plugins.backends.vllm_engine import VLLMBackend

MC = [{"id": f"mc-{i}", "question": f"What is {i} + {i}?",
       "choices": [str(2 * i), str(2 * i + 1), str(2 * i + 3)], "answer": 0} for i in range(1, 6)]
QA = [{"id": "qa-1", "question": "What is the capital of France?", "answer": "Paris"},
      {"id": "qa-2", "question": "What colour is the sky on a clear day?", "answer": "Blue"},
      {"id": "qa-3", "question": "How many legs does a spider have?", "answer": "Eight"}]
TEXT = [{"id": "t1", "text": "The river runs through the old town and into the sea."},
        {"id": "t2", "text": "Bread is made from flour, water, salt and yeast."}]
SFT = [{"prompt": f"What is the capital of Veloria? ({i})",
        "completion": "The capital of Veloria is Quennet."} for i in range(8)]

TUNERS = "".join(f"""
[[tuners]]
name = "{name}"
method = "{method}"
data = "data/sft.jsonl"
options = {{ r = 8, alpha = 16, steps = 2, lr = {lr}, batch_size = 4, max_length = 48 }}
""" for name, method, lr in [("lora-1", "lora", "5e-3"), ("lora-2", "lora", "1e-2"),
                              ("lora-3", "lora", "2e-2"), ("dora", "dora", "1e-2")])


# lora-1 keeps its state after step 1 (a checkpoint variant), and a linear merge of lora-1
# and lora-2 is one more LoRA adapter: both go to the engine as LoRA requests
EXPERIMENT = TUNERS.replace("lr = 5e-3, batch_size = 4, max_length = 48 }",
                            "lr = 5e-3, batch_size = 4, max_length = 48 }\neval_every = 1") + """
[[transforms]]
name = "merge"
kind = "merge"
of = ["lora-1", "lora-2"]
options = { combination_type = "linear", weights = [0.5, 0.5] }
"""


def _suite(model_path, backend: str, tuners: str = TUNERS) -> str:
    options = "options = { max_length = 256 }" if backend == "vllm" else \
        "options = { max_length = 256, batch_size = 8 }"
    return f"""
[suite]
name = "scale"
store = "results/scale.duckdb"
seed = 0

[[models]]
name = "smollm2"
source = "{model_path}"
{tuners}
[[evaluators]]
name = "mc"
kind = "benchmark"
data = "data/mc.jsonl"

[[evaluators]]
name = "qa"
kind = "benchmark"
data = "data/qa.jsonl"
options = {{ max_gen_toks = 8 }}

[[evaluators]]
name = "ppl"
kind = "perplexity"
data = "data/text.jsonl"

[backend]
kind = "{backend}"
{options}
"""


@pytest.fixture()
def data(tmp_path):
    for name, rows in [("mc", MC), ("qa", QA), ("text", TEXT), ("sft", SFT)]:
        write_jsonl(tmp_path / "data" / f"{name}.jsonl", rows)


def test_k_lora_variants_on_one_engine_match_the_hf_backend(run_harness, smollm2, data):
    first = run_harness(_suite(smollm2.path, "vllm", EXPERIMENT))
    assert (first.summary.done, first.summary.failed) == (21, 0)
    rows = first.query("SELECT variant_name, backend_path, info->>'$.backend.engine', "
                       "info->>'$.backend.reason' FROM cells WHERE backend = 'vllm' "
                       "ORDER BY variant_name, evaluator")
    paths = {variant: path for variant, path, _, _ in rows}
    assert paths == {"base": "vllm", "lora-1": "vllm-lora", "lora-2": "vllm-lora",
                     "lora-3": "vllm-lora", "dora": "hf", "lora-1@step1": "vllm-lora",
                     "merge(lora-1,lora-2)": "vllm-lora"}
    assert len({engine for _, _, engine, _ in rows}) == 1  # one engine start for all seven
    assert all("DoRA" in reason for variant, _, _, reason in rows if variant == "dora")

    # The same suite on the hf backend, in the same store: tuned variants are reused.
    second = run_harness(_suite(smollm2.path, "hf", EXPERIMENT))
    assert (second.summary.done, second.summary.failed) == (21, 0)
    pairs = second.query("""
        SELECT v.variant_name, v.evaluator, m.metric, m.value, hm.value
        FROM cells v JOIN metrics m USING (cell_key)
        JOIN cells h ON h.variant_key = v.variant_key AND h.evaluator = v.evaluator
             AND h.backend = 'hf'
        JOIN metrics hm ON hm.cell_key = h.cell_key AND hm.metric = m.metric
        WHERE v.backend = 'vllm'""")
    assert len(pairs) >= 21 * 2
    for variant, evaluator, metric, on_vllm, on_hf in pairs:
        assert on_vllm == pytest.approx(on_hf, rel=1e-4, abs=1e-6), (variant, evaluator, metric)
    outputs = second.query("""
        SELECT count(*), count(*) FILTER (WHERE vs.output = hs.output)
        FROM cells v JOIN samples vs USING (cell_key)
        JOIN cells h ON h.variant_key = v.variant_key AND h.evaluator = v.evaluator
             AND h.backend = 'hf'
        JOIN samples hs ON hs.cell_key = h.cell_key AND hs.item_index = vs.item_index
        WHERE v.backend = 'vllm' AND v.evaluator = 'qa'""")
    assert outputs[0][0] == 21 and outputs[0][0] == outputs[0][1]  # the same generated text


def test_planted_mismatch_fails_only_that_variants_cells(run_harness, smollm2, data,
                                                         monkeypatch):
    run = VLLMBackend._run
    monkeypatch.setattr(VLLMBackend, "_run",
                        lambda self, prompts, params, lora: run(self, prompts, params, None))
    tuners = TUNERS.split("[[tuners]]")[3]  # lora-3: the largest step, a visible change
    result = run_harness(_suite(smollm2.path, "vllm", "[[tuners]]" + tuners))
    rows = result.query("SELECT variant_name, status, error FROM cells ORDER BY variant_name")
    assert [(v, s) for v, s, _ in rows] == [("base", "done")] * 3 + [("lora-3", "failed")] * 3
    for _, _, error in rows[3:]:
        assert "AdapterNotApplied" in error and "the adapter was not applied" in error
    info = result.query("SELECT info FROM cells WHERE variant_name = 'base' LIMIT 1")[0][0]
    assert json.loads(info)["backend"]["generate"] == "vllm"
