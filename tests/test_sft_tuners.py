"""DoRA, QLoRA and full fine-tuning really train, each in its own way."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from safetensors.torch import load_file

from harness import EvaluatorSpec, TuneJob, Variant
from harness_plugins.backends.hf import HFBackend, HFOptions
from harness_plugins.evaluators.perplexity import PerplexityEvaluator, PerplexityOptions
from harness_plugins.tuners.dora import DoraOptions, DoraTuner
from harness_plugins.tuners.full import FullOptions, FullTuner
from harness_plugins.tuners.lora import LoraOptions, LoraTuner
from harness_plugins.tuners.qlora import QLoraOptions, QLoraTuner, quantised_base

from .conftest import SFT_ROWS, completion_nll, write_jsonl

COMMON = dict(steps=12, batch_size=4, max_length=64)


def _job(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "sft.jsonl", SFT_ROWS)
    out = tmp_path / "out"
    out.mkdir()
    return TuneJob(tiny_model, "variant", data, out, seed=0)


def _base(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_model.path).eval(),
            AutoTokenizer.from_pretrained(tiny_model.path))


@pytest.mark.parametrize("tuner", ["dora", "qlora"])
def test_adapter_tuners_lower_completion_loss(tmp_path, tiny_model, tuner):
    from peft import PeftModel

    if tuner == "dora":
        result = DoraTuner(DoraOptions(r=4, alpha=8, lr=1e-2, **COMMON)).tune(_job(tmp_path, tiny_model))
    else:
        result = QLoraTuner(QLoraOptions(r=4, alpha=8, lr=1e-2, **COMMON)).tune(_job(tmp_path, tiny_model))
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["use_dora"] is (tuner == "dora")
    assert (result.path / "adapter_model.safetensors").is_file()
    assert result.record.steps == 12 and 0 < result.record.trainable_params < result.record.total_params
    base, tokenizer = _base(tiny_model)
    before = completion_nll(base, tokenizer, SFT_ROWS)
    after = completion_nll(PeftModel.from_pretrained(base, str(result.path)).eval(), tokenizer, SFT_ROWS)
    assert after < before - 0.5, (before, after)


def test_qlora_base_linear_layers_are_4bit_nf4(tmp_path, tiny_model):
    import bitsandbytes as bnb
    import torch

    model = quantised_base(_job(tmp_path, tiny_model), QLoraOptions())
    linear = {name: module for name, module in model.named_modules()
              if isinstance(module, (torch.nn.Linear, bnb.nn.Linear4bit)) and name != "lm_head"}
    assert len(linear) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    for name, module in linear.items():
        assert isinstance(module, bnb.nn.Linear4bit), name
        assert module.weight.dtype == torch.uint8 and not module.weight.requires_grad
        assert module.weight.quant_state.quant_type == "nf4"
        assert module.weight.quant_state.nested  # double quantisation


def test_full_fine_tuning_changes_every_tensor_and_evaluates_from_its_folder(tmp_path, tiny_model):
    result = FullTuner(FullOptions(lr=1e-3, **COMMON)).tune(_job(tmp_path, tiny_model))
    assert result.kind == "weights"
    assert result.record.trainable_params == result.record.total_params
    tuned = load_file(result.path / "model.safetensors")
    original = load_file(tiny_model.path / "model.safetensors")
    assert tuned.keys() == original.keys()
    unchanged = [name for name in tuned if tuned[name].equal(original[name])]
    assert unchanged == []
    assert (result.path / "tokenizer.json").is_file() and not list(result.path.glob("*.bin"))

    base, tokenizer = _base(tiny_model)
    from transformers import AutoModelForCausalLM

    after = completion_nll(AutoModelForCausalLM.from_pretrained(result.path).eval(), tokenizer,
                           SFT_ROWS)
    assert after < completion_nll(base, tokenizer, SFT_ROWS) - 0.5

    # the backend scores the weights folder, then the untouched base again
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": r["completion"]} for r in SFT_ROWS[-1:]] +
                       [{"text": "The capital of Veloria is Quennet."}])
    spec = EvaluatorSpec("ppl", "perplexity", "general", str(data), 0)
    backend = HFBackend(HFOptions())
    backend.load(tiny_model)

    def perplexity(variant):
        backend.activate(variant)
        return PerplexityEvaluator(spec, PerplexityOptions()).evaluate(backend).metrics[0].value

    base_variant = Variant("base", "b", tiny_model, "base")
    first = perplexity(base_variant)
    full = perplexity(Variant("full", "f", tiny_model, "weights", result.path, "full"))
    assert full < first
    assert perplexity(base_variant) == first


@pytest.mark.parametrize("options", [LoraOptions, DoraOptions, QLoraOptions])
def test_an_adapter_on_lm_head_is_a_suite_error(options):
    for modules in (["q_proj", "lm_head"], "lm_head"):
        with pytest.raises(ValidationError,
                           match=r"target_modules\n.*'lm_head' cannot carry the adapter"):
            options(target_modules=modules)
    assert options(target_modules=["q_proj", "v_proj"]).target_modules == ["q_proj", "v_proj"]


def test_trl_refuses_an_adapter_on_lm_head_which_is_why_validation_does(tmp_path, tiny_model):
    # options built without validation reach trl's SFTTrainer, which raises (trl >= 1.16)
    unchecked = LoraOptions.model_construct(target_modules=["q_proj", "lm_head"], **COMMON)
    with pytest.raises(ValueError, match="Applying a PEFT adapter to `lm_head` is not supported"):
        LoraTuner(unchecked).tune(_job(tmp_path, tiny_model))
