"""Perplexity equals a hand computation, token by token, on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from harness.components import EvaluatorSpec, Variant
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
