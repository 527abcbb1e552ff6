"""Perplexity equals a hand computation, token by token, on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from harness import EvaluatorSpec, Variant
from harness_plugins.backends.hf import HFBackend, HFOptions
from harness_plugins.evaluators.perplexity import PerplexityEvaluator, PerplexityOptions

from .conftest import write_jsonl

TEXTS = [
    "Short one.",
    "A somewhat longer sentence about rivers, bread and the sea, with commas.",
    "Numbers like 12 and 144 and words like Brasília.",
]


def _by_hand(model_path, texts):
    """Sum of -log p(token | all before it), the first token after BOS-or-EOS, one text at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    total_nll, total_tokens, total_bytes, per_item = 0.0, 0, 0, []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        nll = 0.0
        for position, token in enumerate(ids):
            context = torch.tensor([[prefix, *ids[:position]]])
            with torch.no_grad():
                logits = model(input_ids=context).logits[0, -1].double()
            nll -= torch.log_softmax(logits, dim=-1)[token].item()
        per_item.append(nll)
        total_nll += nll
        total_tokens += len(ids)
        total_bytes += len(text.encode("utf-8"))
    return total_nll, total_tokens, total_bytes, per_item


@pytest.mark.parametrize("batch_size", [1, 2])
def test_perplexity_matches_hand_computation(tmp_path, tiny_model, batch_size):
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])
    backend = HFBackend(HFOptions(batch_size=batch_size))
    backend.load(tiny_model)
    backend.activate(Variant("base", "k", tiny_model, "base"))
    spec = EvaluatorSpec("ppl", "perplexity", "general", str(data), 0)
    result = PerplexityEvaluator(spec, PerplexityOptions()).evaluate(backend)
    metrics = {m.name: m.value for m in result.metrics}

    nll, tokens, nbytes, per_item = _by_hand(tiny_model.path, TEXTS)
    assert metrics["token_nll"] == pytest.approx(nll / tokens, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert metrics["bits_per_byte"] == pytest.approx(nll / (math.log(2) * nbytes), rel=1e-5)
    assert [s.extra["nll"] for s in result.samples] == pytest.approx(per_item, rel=1e-5)
    assert [m.name for m in result.metrics if m.primary] == ["perplexity"]
    assert all(not m.higher_is_better for m in result.metrics)


LONG_TEXTS = [
    "The river ran past the mill and the bakery, where the bread was still warm in the morning, "
    "and the children counted the boats: one, two, three, twelve, forty-four.",
    "Short text.",
    "Every window of this text is shorter than the text itself, so the evaluator must score it "
    "in pieces, and each piece must be conditioned the way lm-eval conditions it, token by token.",
]


@pytest.mark.parametrize("window", [16, 23])
def test_rolling_windows_equal_lm_eval_loglikelihood_rolling(tmp_path, tiny_model, window):
    """Texts longer than the context: word/byte perplexity and bits per byte as lm-eval's
    ``loglikelihood_rolling`` computes them with the same context length."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    data = write_jsonl(tmp_path / "long.jsonl", [{"text": t} for t in LONG_TEXTS])
    backend = HFBackend(HFOptions(batch_size=2, max_length=window))
    backend.load(tiny_model)
    backend.activate(Variant("base", "k", tiny_model, "base"))
    spec = EvaluatorSpec("long", "perplexity", "general", str(data), 0)
    result = PerplexityEvaluator(spec, PerplexityOptions()).evaluate(backend)
    ours = {m.name: m.value for m in result.metrics}
    assert max(s.extra["tokens"] for s in result.samples) > 2 * window  # several windows

    config = {
        "task": "rolling", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "loglikelihood_rolling",
        "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
    }
    lm = HFLM(pretrained=str(tiny_model.path), device="cpu", batch_size=2, dtype="float32",
              max_length=window)
    reference = simple_evaluate(model=lm, tasks=[config], verbosity="ERROR")["results"]["rolling"]
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours[metric] == pytest.approx(reference[f"{metric},none"], rel=1e-5), metric


def test_overlapping_windows_condition_on_more_context(tmp_path, tiny_model):
    """stride < window: each token after the first window sees window - stride more tokens of
    context; with stride 1 every token is scored on the `window` tokens before it, by hand."""
    from transformers import AutoModelForCausalLM

    text = LONG_TEXTS[0]
    window = 12
    backend = HFBackend(HFOptions(batch_size=4, max_length=window))
    backend.load(tiny_model)
    backend.activate(Variant("base", "k", tiny_model, "base"))
    [score] = backend.score_texts([text], stride=1)
    ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert score.token_ids == ids and len(score.logprobs) == len(ids)

    model = AutoModelForCausalLM.from_pretrained(tiny_model.path).eval()
    full = [backend.prefix_token_id, *ids]
    expected = []
    for position in range(len(ids)):  # token ids[position] is full[position + 1]
        context = full[max(0, position + 1 - window) : position + 1]  # the last `window` tokens
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([context])).logits[0, -1]
        expected.append(torch.log_softmax(logits.double(), -1)[ids[position]].item())
    assert score.logprobs == pytest.approx(expected, abs=1e-4)
