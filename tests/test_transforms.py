"""The built-in transforms against references: WiSE-FT interpolation (exact at both ends),
peft's add_weighted_adapter called directly, and bitsandbytes layers after quantisation."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import harness
from harness.plugins import PluginHost
from harness_plugins.transforms.interpolate import InterpolateOptions, InterpolateTransform
from harness_plugins.transforms.merge import MergeOptions, MergeTransform
from harness_plugins.transforms.quantize import QuantizeOptions, QuantizeTransform

TOKENS = torch.tensor([[1, 17, 42, 99, 250, 7, 300]])
TARGETS = ["q_proj", "v_proj", "up_proj"]


def _base(path):
    return harness.load_causal_lm(path, device="cpu", dtype=torch.float32,
                                  trust_remote_code=False)


def _make_adapter(base_path, out, *, r=4, seed=0, use_dora=False):
    """A LoRA (or DoRA) adapter whose B is not zero, saved as peft saves a tuner's."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False,
                        use_dora=use_dora)
    get_peft_model(_base(base_path), config).save_pretrained(out)
    return out


def _logits(base_path, adapter=None):
    from peft import PeftModel

    model = _base(base_path)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))  # as the hf backend loads it
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


def _tensors(folder):
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model):
    """Variants of the tiny model: two LoRAs of rank 4, one of rank 8, a DoRA, and full
    weights (the base perturbed), each as a harness.Variant."""
    root = tmp_path_factory.mktemp("variants")
    base = tiny_model.path

    def variant(name, kind, path):
        return harness.Variant(name, name, tiny_model, kind, path)

    full = _base(base)
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in full.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    full.save_pretrained(root / "full")
    AutoTokenizer.from_pretrained(base).save_pretrained(root / "full")
    return {
        "lora": variant("lora", "adapter", _make_adapter(base, root / "lora", seed=1)),
        "lora2": variant("lora2", "adapter", _make_adapter(base, root / "lora2", seed=2)),
        "lora8": variant("lora8", "adapter", _make_adapter(base, root / "lora8", r=8, seed=3)),
        "dora": variant("dora", "adapter", _make_adapter(base, root / "dora", use_dora=True)),
        "full": variant("full", "weights", root / "full"),
    }


def _apply(transform, sources, tiny_model, tmp_path, output="", seed=0):
    out = tmp_path / f"out-{output or 'only'}"
    out.mkdir(parents=True)
    job = harness.TransformJob(tiny_model, sources, tiny_model.path, output, out, seed)
    result = transform.apply(job)
    assert result.path.is_relative_to(out)
    return result


# -- interpolate ------------------------------------------------------------------------------


def _interpolate(alphas, source, tiny_model, tmp_path):
    transform = InterpolateTransform(InterpolateOptions(alphas=alphas))
    labels = InterpolateTransform.outputs(transform.options)
    return {label: _apply(transform, [source], tiny_model, tmp_path, label) for label in labels}


def test_interpolate_labels_are_compact():
    assert InterpolateTransform.outputs(InterpolateOptions(alphas=[0.25, 0.5, 1.0])) == [
        "0.25", "0.5", "1"]


def test_interpolating_a_lora_scales_b_and_is_exact_at_both_ends(made, tiny_model, tmp_path):
    results = _interpolate([0.0, 0.5, 1.0], made["lora"], tiny_model, tmp_path)
    assert {r.kind for r in results.values()} == {"adapter"}

    source = load_file(made["lora"].path / "adapter_model.safetensors")
    half = load_file(results["0.5"].path / "adapter_model.safetensors")
    assert half.keys() == source.keys()
    b_names = [name for name in source if ".lora_B." in name]
    assert len(b_names) == 2 * len(TARGETS)  # two layers
    for name, tensor in source.items():
        if name in b_names:
            assert tensor.abs().sum() > 0
            assert torch.equal(half[name], 0.5 * tensor)
        else:
            assert torch.equal(half[name], tensor)

    base_logits = _logits(tiny_model.path)
    adapter_logits = _logits(tiny_model.path, made["lora"].path)
    assert not torch.equal(base_logits, adapter_logits)
    assert torch.equal(_logits(tiny_model.path, results["0"].path), base_logits)
    assert torch.equal(_logits(tiny_model.path, results["1"].path), adapter_logits)


def test_interpolating_full_weights_lerps_each_tensor(made, tiny_model, tmp_path):
    results = _interpolate([0.0, 0.25, 1.0], made["full"], tiny_model, tmp_path)
    assert {r.kind for r in results.values()} == {"weights"}
    parent, variant = _tensors(tiny_model.path), _tensors(made["full"].path)
    ends = {"0": parent, "1": variant}
    for label, result in results.items():
        made_tensors = _tensors(result.path)
        assert made_tensors.keys() == parent.keys()
        for name in parent:
            expected = (ends[label][name] if label in ends
                        else torch.lerp(parent[name], variant[name], 0.25))
            assert torch.equal(made_tensors[name], expected), (label, name)
    assert not torch.equal(_tensors(results["0.25"].path)["lm_head.weight"],
                           parent["lm_head.weight"])
    assert (results["1"].path / "tokenizer.json").is_file()


def test_interpolating_tied_weights_moves_them_once(tiny_model, tmp_path):
    """Tied embeddings and head share one tensor: lerped twice, they would land elsewhere."""
    config = LlamaConfig(vocab_size=512, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "parent")
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    model.save_pretrained(tmp_path / "tuned")
    AutoTokenizer.from_pretrained(tiny_model.path).save_pretrained(tmp_path / "tuned")
    parent = harness.ResolvedModel("tied", "test", tmp_path / "parent", "tied")
    job = harness.TransformJob(parent, [harness.Variant("tuned", "t", parent, "weights",
                                                        tmp_path / "tuned")],
                               parent.path, "0.5", tmp_path / "out", 0)
    job.output_dir.mkdir()
    result = InterpolateTransform(InterpolateOptions(alphas=[0.5])).apply(job)
    made_tensors = _tensors(result.path)
    name = "model.embed_tokens.weight"
    assert torch.equal(made_tensors[name], torch.lerp(_tensors(tmp_path / "parent")[name],
                                                      _tensors(tmp_path / "tuned")[name], 0.5))


def test_interpolating_dora_goes_through_merged_weights(made, tiny_model, tmp_path):
    """Scaling B does not interpolate DoRA; the merged weights are interpolated instead."""
    results = _interpolate([0.0, 1.0], made["dora"], tiny_model, tmp_path)
    assert {r.kind for r in results.values()} == {"weights"}
    parent = _tensors(tiny_model.path)
    at_zero = _tensors(results["0"].path)
    assert all(torch.equal(at_zero[name], parent[name]) for name in parent)
    dora_logits = _logits(tiny_model.path, made["dora"].path)
    assert not torch.allclose(dora_logits, _logits(tiny_model.path), atol=1e-4)
    assert torch.allclose(_logits(results["1"].path), dora_logits, atol=1e-5)


@pytest.mark.parametrize("transform", [
    InterpolateTransform(InterpolateOptions(alphas=[0.5])), QuantizeTransform(QuantizeOptions())])
def test_a_quantized_source_is_refused(transform, quantized, tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"variant 'lora~nf4' is quantised \(bitsandbytes"):
        _apply(transform, [quantized], tiny_model, tmp_path,
               transform.outputs(transform.options)[0])


@pytest.mark.parametrize("alphas, message", [
    ([1.5], r"in \[0, 1\]"),
    ([-0.1, 0.5], r"in \[0, 1\]"),
    ([], "at least 1 item"),
    ([0.5, 0.25, 0.5], "repeated: 0.5"),
])
def test_interpolate_options_reject_bad_alphas(alphas, message):
    with pytest.raises(ValidationError, match=message) as info:
        InterpolateOptions(alphas=alphas)
    assert info.value.error_count() == 1


# -- merge ----------------------------------------------------------------------------------


def _peft_model(tiny_model, sources, names):
    """The sources in peft on the device and dtype the merge uses (DARE's draws and the
    SVD's rounding depend on the device)."""
    from peft import PeftModel

    device = harness.pick_device("auto")
    base = harness.load_causal_lm(tiny_model.path, device=device,
                                  dtype=harness.pick_dtype("auto", device),
                                  trust_remote_code=False)
    model = PeftModel.from_pretrained(base, str(sources[0].path), adapter_name=names[0])
    for source, name in zip(sources[1:], names[1:]):
        model.load_adapter(str(source.path), adapter_name=name)
    return model


def test_merging_one_adapter_linearly_keeps_its_delta(made, tiny_model, tmp_path):
    transform = MergeTransform(MergeOptions(combination_type="linear"))
    result = _apply(transform, [made["lora"]], tiny_model, tmp_path)
    assert result.kind == "adapter" and result.path.name == "combined"
    # the merged adapter alone: not the sources peft held beside it
    assert list(result.path.parent.rglob("adapter_model.safetensors")) == [
        result.path / "adapter_model.safetensors"]

    from peft.tuners.lora import LoraLayer

    model = _peft_model(tiny_model, [made["lora"]], ["source"])
    model.load_adapter(str(result.path), adapter_name="merged")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 2 * len(TARGETS)
    for layer in layers:
        source, merged = layer.get_delta_weight("source"), layer.get_delta_weight("merged")
        assert source.abs().sum() > 0
        torch.testing.assert_close(merged, source, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("combination_type", ["ties", "dare_ties", "ties_svd"])
def test_merge_equals_peft_called_directly(combination_type, made, tiny_model, tmp_path):
    from peft.utils import get_peft_model_state_dict

    sources = [made["lora"], made["lora2"]]
    options = MergeOptions(combination_type=combination_type, weights=[0.7, 0.4], density=0.5)
    result = _apply(MergeTransform(options), sources, tiny_model, tmp_path, seed=11)
    saved = load_file(result.path / "adapter_model.safetensors")

    model = _peft_model(tiny_model, sources, ["a", "b"])
    torch.manual_seed(11)
    model.add_weighted_adapter(["a", "b"], [0.7, 0.4], "reference",
                               combination_type=combination_type, density=0.5,
                               svd_full_matrices=False)
    reference = get_peft_model_state_dict(model, adapter_name="reference")
    assert saved.keys() == reference.keys() and saved
    for name, tensor in reference.items():
        assert torch.equal(saved[name], tensor), name
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["r"] == 4


def test_dare_prunes_by_the_seed(made, tiny_model, tmp_path):
    transform = MergeTransform(MergeOptions(combination_type="dare_linear"))
    sources = [made["lora"], made["lora2"]]
    one, two = (load_file(_apply(transform, sources, tiny_model, tmp_path / str(seed),
                                 seed=seed).path / "adapter_model.safetensors")
                for seed in (1, 2))
    assert any(not torch.equal(one[name], two[name]) for name in one)


def test_merge_refuses_a_full_weights_variant(made, tiny_model, tmp_path):
    with pytest.raises(ValueError, match="merge needs LoRA adapters; 'full' is a full-weights"):
        _apply(MergeTransform(MergeOptions()), [made["lora"], made["full"]], tiny_model, tmp_path)


def test_merge_refuses_dora_adapters(made, tiny_model, tmp_path):
    with pytest.raises(ValueError, match="'dora' is one"):
        _apply(MergeTransform(MergeOptions()), [made["lora"], made["dora"]], tiny_model, tmp_path)


def test_merge_weights_must_match_the_sources(made, tiny_model, tmp_path):
    transform = MergeTransform(MergeOptions(weights=[1.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"3 weights for 2 variants \('lora', 'lora2'\)"):
        _apply(transform, [made["lora"], made["lora2"]], tiny_model, tmp_path)


def test_merge_of_different_ranks_names_both(made, tiny_model, tmp_path):
    transform = MergeTransform(MergeOptions(combination_type="ties"))
    with pytest.raises(ValueError) as info:
        _apply(transform, [made["lora"], made["lora8"]], tiny_model, tmp_path)
    message = str(info.value)
    assert "cannot merge 'lora', 'lora8' with combination_type 'ties'" in message
    assert "same r value" in message and "'lora' r=4, 'lora8' r=8" in message


def test_merge_of_different_ranks_works_with_svd(made, tiny_model, tmp_path):
    result = _apply(MergeTransform(MergeOptions()), [made["lora"], made["lora8"]], tiny_model,
                    tmp_path)
    assert json.loads((result.path / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.parametrize("options, message", [
    ({"combination_type": "linear", "density": 0.5}, "density is not read"),
    ({"combination_type": "ties", "svd_rank": 4}, "svd_rank is not read"),
    ({"combination_type": "cat", "majority_sign_method": "frequency"},
     "majority_sign_method is not read"),
    ({"density": 0.0}, "greater than 0"),
    ({"combination_type": "average"}, "Input should be"),
])
def test_merge_options_reject_what_the_type_ignores(options, message):
    with pytest.raises(ValidationError, match=message):
        MergeOptions(**options)


def test_merge_density_defaults_only_for_pruning_types():
    assert MergeOptions().density_for_peft() == 0.2
    assert MergeOptions(combination_type="dare_ties", density=0.6).density_for_peft() == 0.6
    assert MergeOptions(combination_type="cat").density_for_peft() is None


# -- quantize -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized(made, tiny_model, tmp_path_factory):
    """The LoRA variant quantised to 4-bit NF4, as a weights variant."""
    transform = QuantizeTransform(QuantizeOptions())
    result = _apply(transform, [made["lora"]], tiny_model, tmp_path_factory.mktemp("nf4"))
    return harness.Variant("lora~nf4", "lora~nf4", tiny_model, result.kind, result.path)


def _relative_error(logits, reference):
    return ((logits - reference).norm() / reference.norm()).item()


def _linear_kinds(model):
    return {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__}


def test_quantize_4bit_reloads_as_linear4bit(quantized, made, tiny_model):
    assert quantized.kind == "weights"
    assert sorted(p.name for p in quantized.path.parent.iterdir()) == ["weights"]
    config = json.loads((quantized.path / "config.json").read_text())["quantization_config"]
    assert config["bnb_4bit_quant_type"] == "nf4" and config["bnb_4bit_use_double_quant"]

    reloaded = _base(quantized.path)
    assert _linear_kinds(reloaded.model) == {"Linear4bit"}  # every layer; the head stays
    with torch.no_grad():
        logits = reloaded(input_ids=TOKENS).logits
    full = _logits(tiny_model.path, made["lora"].path)
    assert not torch.equal(logits, full)
    # NF4 moves the random tiny model's logits by about 15% (of their norm); the variant
    # itself is more than 100% away from the base, so the quantised model is still it
    assert _relative_error(logits, full) < 0.25
    assert _relative_error(logits, full) < 0.2 * _relative_error(_logits(tiny_model.path), full)


def test_quantize_8bit_reloads_as_linear8bitlt(made, tiny_model, tmp_path):
    result = _apply(QuantizeTransform(QuantizeOptions(bits=8)), [made["full"]], tiny_model,
                    tmp_path)
    reloaded = _base(result.path)
    assert _linear_kinds(reloaded.model) == {"Linear8bitLt"}
    with torch.no_grad():
        logits = reloaded(input_ids=TOKENS).logits
    full = _logits(made["full"].path)
    assert not torch.equal(logits, full)
    assert _relative_error(logits, full) < 0.05  # int8 keeps more than NF4: 8 bits a weight


def test_quantize_options_keep_4bit_settings_to_4_bits():
    with pytest.raises(ValidationError, match="bits = 8 takes no 4-bit option; remove quant_type"):
        QuantizeOptions(bits=8, quant_type="fp4")


# -- registration ---------------------------------------------------------------------------


def test_the_three_transforms_are_registered():
    host = PluginHost.load(entry_points=False)
    assert host.names("transform") == ["interpolate", "merge", "quantize"]
    assert host.component("transform", "merge").cls.combines is True
    assert host.component("transform", "interpolate").plugin == "transforms.interpolate"
