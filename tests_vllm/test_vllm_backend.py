"""The vLLM backend on a real vLLM engine, against the hf backend on the same model.

Both hold SmolLM2-135M-Instruct in float32 on the CPU here, so the engine and
transformers agree to float rounding: greedy texts are equal and log-probabilities
agree to 1e-3.
"""

from __future__ import annotations

import pytest

from harness import Variant
from harness_plugins.backends.hf import HFBackend, HFOptions
from harness_plugins.backends.vllm_engine import AdapterNotApplied, VLLMBackend, VLLMOptions

from conftest import make_adapter

PROMPTS = ["The capital of France is", "Write one sentence about rain.", "1, 2, 3,"]
TEXTS = ["The river runs through the old town and into the sea.",
         "Bread is made from flour, water, salt and yeast."]


@pytest.fixture(scope="module")
def adapters(smollm2, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_adapter(smollm2.path, root / "a", seed=1),
        "b": make_adapter(smollm2.path, root / "b", seed=2),
        "wide": make_adapter(smollm2.path, root / "wide", seed=3, r=128),
        "dora": make_adapter(smollm2.path, root / "dora", seed=4, use_dora=True),
    }


@pytest.fixture(scope="module")
def engine(smollm2):
    backend = VLLMBackend(VLLMOptions(max_length=512, max_lora_rank=16))
    backend.load(smollm2)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def reference(smollm2):
    backend = HFBackend(HFOptions(max_length=512))
    backend.load(smollm2)
    yield backend
    backend.close()


def _variant(model, name, path, kind="adapter"):
    return Variant(name, f"key-{name}", model, kind, path)


def test_lora_requests_match_peft_on_one_engine(engine, reference, smollm2, adapters):
    engine_id = engine.engine_id
    for name in ("a", "b"):
        variant = _variant(smollm2, name, adapters[name])
        engine.activate(variant)
        reference.activate(variant)
        route = engine.route()
        assert route["path"] == "vllm-lora" and route["engine"] == engine_id
        check = route["adapter_check"]
        assert check["to_adapter"] < 1e-3 < 0.1 < check["adapter_moves_base"]
        assert engine.generate(PROMPTS, 12) == reference.generate(PROMPTS, 12)
        with engine.as_base(), reference.as_base():
            assert engine.generate(PROMPTS, 12) == reference.generate(PROMPTS, 12)
    assert engine.engine_id == engine_id  # no reload between adapters


def test_the_two_adapters_differ_from_each_other_and_the_base(engine, smollm2, adapters):
    outputs = {}
    engine.activate(Variant("base", "key-base", smollm2, "base"))
    assert engine.route()["path"] == "vllm"
    outputs["base"] = engine.generate(PROMPTS, 12)
    for name in ("a", "b"):
        engine.activate(_variant(smollm2, name, adapters[name]))
        outputs[name] = engine.generate(PROMPTS, 12)
    assert len({tuple(v) for v in outputs.values()}) == 3


@pytest.mark.parametrize("variant", ["base", "a"])
def test_engine_log_likelihood_matches_transformers(engine, smollm2, adapters, variant):
    engine.activate(Variant("base", "key-base", smollm2, "base") if variant == "base"
                    else _variant(smollm2, variant, adapters[variant]))
    texts = [text * repeat for text in TEXTS for repeat in (1, 3, 7)]
    engine.options.loglikelihood = "vllm"
    try:
        on_engine = engine.score_texts(texts)
    finally:
        engine.options.loglikelihood = "hf"
    on_copy = engine.score_texts(texts)
    for left, right in zip(on_engine, on_copy):
        assert left.token_ids == right.token_ids and len(left.logprobs) == len(right.logprobs)
        assert max(abs(x - y) for x, y in zip(left.logprobs, right.logprobs)) < 1e-3


@pytest.mark.parametrize("stride", [None, 200])
def test_engine_rolling_windows_match_transformers_with_the_same_width(engine, smollm2,
                                                                       adapters, stride):
    """A text three times the context: the engine's windows are two tokens shorter, so the
    copy is given the same width for the comparison."""
    engine.activate(_variant(smollm2, "a", adapters["a"]))
    text = " ".join(TEXTS) * 80  # about 1,900 tokens against max_length 512
    engine.options.loglikelihood = "vllm"
    try:
        [on_engine] = engine.score_texts([text], stride=stride)
    finally:
        engine.options.loglikelihood = "hf"
    engine.hf.options.max_length = engine.max_length - 2
    try:
        [on_copy] = engine.score_texts([text], stride=stride)
    finally:
        engine.hf.options.max_length = 512
    assert len(on_engine.token_ids) > 3 * 512
    assert len(on_engine.logprobs) == len(on_copy.logprobs) == len(on_engine.token_ids)
    assert max(abs(x - y) for x, y in zip(on_engine.logprobs, on_copy.logprobs)) < 1e-3


def test_lm_eval_multiple_choice_on_the_engine_matches_transformers(engine, smollm2, adapters,
                                                                    tmp_path):
    """lm-eval's loglikelihood requests answered by the engine (one prompt per call) and by
    the copy give the same per-choice log-likelihoods."""
    from harness import EvaluatorSpec
    from harness.testing import write_jsonl
    from harness_plugins.evaluators.benchmark import BenchmarkEvaluator, BenchmarkOptions

    rows = [{"id": f"mc-{i}", "question": f"What is {i} + {i}?",
             "choices": [str(2 * i), str(2 * i + 1), str(2 * i + 3)], "answer": 0}
            for i in range(1, 6)]
    data = write_jsonl(tmp_path / "mc.jsonl", rows)
    spec = EvaluatorSpec("mc", "benchmark", "general", str(data), 0)
    engine.activate(_variant(smollm2, "b", adapters["b"]))
    results = {}
    for route in ("vllm", "hf"):
        engine.options.loglikelihood = route  # read by the lm-eval wrapper as it answers
        results[route] = BenchmarkEvaluator(spec, BenchmarkOptions()).evaluate(engine)
    engine.options.loglikelihood = "hf"
    on_engine = [lp for sample in results["vllm"].samples for lp in sample.logprobs]
    on_copy = [lp for sample in results["hf"].samples for lp in sample.logprobs]
    assert len(on_engine) == len(on_copy) == 15
    assert max(abs(x - y) for x, y in zip(on_engine, on_copy)) < 1e-3
    assert [m.value for m in results["vllm"].metrics] == [m.value for m in results["hf"].metrics]


def test_planted_mismatch_fails_the_check(engine, smollm2, adapters, monkeypatch):
    """The failure users of other tools report: the engine silently runs the base."""
    run = VLLMBackend._run
    monkeypatch.setattr(VLLMBackend, "_run",
                        lambda self, prompts, params, lora: run(self, prompts, params, None))
    with pytest.raises(AdapterNotApplied, match="closer to the untouched base"):
        engine.activate(_variant(smollm2, "a", adapters["a"]))


@pytest.mark.parametrize("name, reason", [("wide", "greater than max_lora_rank"),
                                          ("dora", "DoRA")])
def test_adapters_the_engine_cannot_serve_go_to_transformers(engine, reference, smollm2,
                                                             adapters, name, reason):
    variant = _variant(smollm2, name, adapters[name])
    engine.activate(variant)
    reference.activate(variant)
    route = engine.route()
    assert route["path"] == "hf" and reason in route["reason"]
    assert route["generate"] == route["loglikelihood"] == "hf"
    assert engine.generate(PROMPTS, 8) == reference.generate(PROMPTS, 8)


def test_a_variant_trained_on_another_goes_to_transformers(engine, reference, smollm2, adapters,
                                                           tmp_path):
    """An adapter trained on top of another variant (``from``) applies to that variant's
    merged weights, which the engine does not hold: it runs on the transformers copy, with
    the reason, and scores there as the hf backend scores it."""
    from harness.loading import merge_adapter

    merged = tmp_path / "merged"
    merge_adapter(smollm2.path, adapters["a"], merged, trust_remote_code=False)
    variant = Variant("a.b", "key-a.b", smollm2, "adapter", adapters["b"], base_path=merged,
                      parent="a")
    engine.activate(variant)
    reference.activate(variant)
    route = engine.route()
    assert route["path"] == "hf" and "trained on top of 'a'" in route["reason"]
    assert engine.generate(PROMPTS, 8) == reference.generate(PROMPTS, 8)
    stacked = reference.score_texts(TEXTS)
    reference.activate(_variant(smollm2, "b", adapters["b"]))  # the same adapter on the base
    assert [s.logprobs for s in stacked] != [s.logprobs for s in reference.score_texts(TEXTS)]
