"""The hf backend evaluates an adapter merged into copies of the weights it touches: the
variant scores as peft's unmerged adapter does (to float rounding), its forward pass runs no
adapter layer, and the base, before and after any variant and inside ``as_base()``, scores
bit for bit as a backend that never loaded an adapter."""

from __future__ import annotations

import shutil

import pytest
import torch

from harness import ResolvedModel, Variant
from harness.loading import merge_adapter
from harness_plugins.backends import loading
from harness_plugins.backends.hf import HFBackend, HFOptions

TEXTS = [
    "The river runs through the old town and into the sea.",
    "Bread is made from flour, water, salt and yeast.",
    "A week has seven days and a year has twelve months, or so they say.",
]
PAIRS = [("Tell me about rivers.", "Rivers run into the sea."), ("Count to three.", "1 2 3")]
#: merged and unmerged adapters round differently in float32; on the tiny model the
#: log-probabilities differ by about 1e-6 (measured), well under this, and an adapter
#: moves them by more than 0.1 (asserted below), so the check is not vacuous
TOLERANCE = 1e-4


def _adapter(base_path, out, *, seed, targets="all-linear", **config):
    """A peft adapter with random (non-zero) weights, saved as a tuner saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": targets,
                           "init_lora_weights": False, **config})
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def variants(tiny_model, tmp_path_factory):
    """Two LoRAs, one with rsLoRA scaling and per-module ranks and alphas, a DoRA, and a LoRA
    stacked (``from``) on the first one's merged weights."""
    root = tmp_path_factory.mktemp("variants")
    base = tiny_model.path

    def adapter(name, seed, **kw):
        return Variant(name, f"key-{name}", tiny_model, "adapter",
                       _adapter(base, root / name, seed=seed, **kw), "lora")

    made = {"lora": adapter("lora", 0), "dora": adapter("dora", 2, use_dora=True),
            "lora2": adapter("lora2", 1, use_rslora=True, rank_pattern={"q_proj": 2},
                             alpha_pattern={"v_proj": 32})}
    parent = root / "lora-merged"
    merge_adapter(base, made["lora"].path, parent, trust_remote_code=False)
    made["stacked"] = Variant("stacked", "key-stacked", tiny_model, "adapter",
                              _adapter(parent, root / "stacked", seed=3), "dpo",
                              base_path=parent, parent="lora")
    return made


def _backend(model):
    backend = HFBackend(HFOptions(batch_size=2, device="cpu", dtype="float32"))
    backend.load(model)
    backend.activate(Variant("base", "base", model, "base"))
    return backend


def _outputs(backend):
    """Everything a cell can ask of the backend, as plain values and tensors."""
    return {
        "scores": [s.logprobs for s in backend.score_texts(TEXTS)],
        "generated": backend.generate(TEXTS, max_new_tokens=6),
        "distributions": backend.continuation_logprobs(PAIRS),
        "moments": [(m.logprobs, m.means, m.stds) for m in backend.token_moments(TEXTS)],
    }


def _identical(a, b):
    assert a["scores"] == b["scores"]
    assert a["generated"] == b["generated"]
    assert a["moments"] == b["moments"]
    assert all(torch.equal(x, y) for x, y in zip(a["distributions"], b["distributions"]))


def _gap(a, b):
    """Largest difference between two backends' token log-probabilities."""
    return max(abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


@pytest.fixture(scope="module")
def untouched(tiny_model):
    """The base, from a backend that never loaded an adapter."""
    return _outputs(_backend(tiny_model))


def test_base_is_bit_identical_before_between_and_after_variants(tiny_model, variants,
                                                                 untouched):
    backend = _backend(tiny_model)
    base = Variant("base", "base", tiny_model, "base")
    _identical(_outputs(backend), untouched)
    for name in ("lora", "dora", "stacked", "lora2", "lora"):
        backend.activate(variants[name])
        _outputs(backend)
        backend.activate(base)
        _identical(_outputs(backend), untouched)
    # the base's tensors themselves were never written
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(tiny_model.path).state_dict()
    for key, value in backend._base.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, fresh[key.replace(".base_layer", "")]), key


@pytest.mark.parametrize("name", ["lora", "dora", "stacked"])
def test_as_base_inside_a_variant_is_the_base_bit_for_bit(tiny_model, variants, untouched,
                                                          name):
    backend = _backend(tiny_model)
    backend.activate(variants["lora2"])  # another adapter before: nothing of it may linger
    backend.activate(variants[name])
    before = _outputs(backend)
    with backend.as_base():
        _identical(_outputs(backend), untouched)
    _identical(_outputs(backend), before)  # and the variant exactly as it was
    assert backend.active is variants[name]


def test_a_variant_after_another_reuses_its_copies_and_scores_as_if_alone(tiny_model,
                                                                          variants):
    """The merged copies of one plain LoRA are written over by the next (no new memory per
    variant), and what is left of the first changes nothing of the second."""
    alone = _backend(tiny_model)
    alone.activate(variants["lora"])
    expected = _outputs(alone)

    backend = _backend(tiny_model)
    backend.activate(variants["lora2"])
    first = {name: copy.data_ptr() for name, copy in backend._buffers.items()}
    backend.activate(variants["lora"])
    assert first and {name: copy.data_ptr() for name, copy in backend._buffers.items()} == first
    _identical(_outputs(backend), expected)


@pytest.mark.parametrize("name", ["lora", "lora2", "dora", "stacked"])
def test_variant_scores_as_peft_unmerged_adapter(tiny_model, variants, untouched, name,
                                                 monkeypatch):
    merged = _backend(tiny_model)
    merged.activate(variants[name])
    assert merged._merged is not None  # merged, not evaluated through peft's layers
    assert (merged._peft is not None) == (name == "dora")  # a plain LoRA: read, not built in
    scores = [s.logprobs for s in merged.score_texts(TEXTS)]

    monkeypatch.setattr(loading.MergedAdapter, "read", classmethod(lambda cls, m, p, b=None: None))
    monkeypatch.setattr(loading.MergedAdapter, "merge", classmethod(lambda cls, p, n: None))
    unmerged = _backend(tiny_model)
    unmerged.activate(variants[name])
    reference = [s.logprobs for s in unmerged.score_texts(TEXTS)]

    assert _gap(scores, untouched["scores"]) > 0.1  # the adapter really moves the scores
    assert _gap(scores, reference) < TOLERANCE


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_a_merged_adapter_runs_no_adapter_layer(tiny_model, variants, name):
    """The speed-up itself: with the adapter merged, no adapter matrix is multiplied (peft's
    layers are built in by the DoRA, which peft loads; the plain LoRA never needs them)."""
    backend = _backend(tiny_model)
    backend.activate(variants["dora"])
    backend.activate(variants[name])
    calls = []
    adapter_modules = [m for key, m in backend._base.named_modules()
                       if ".lora_" in key and not isinstance(m, torch.nn.ModuleDict)]
    assert adapter_modules
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in adapter_modules]
    try:
        scores = [s.logprobs for s in backend.score_texts(TEXTS)]
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []
    with backend.as_base():
        assert scores != [s.logprobs for s in backend.score_texts(TEXTS)]


def test_an_adapter_on_a_tied_weight_stays_unmerged(tiny_model, tmp_path):
    """Merging into an output layer tied to the embedding would change the embedding too;
    such an adapter runs unmerged, and the base stays bit for bit."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model.path)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    folder = tmp_path / "tied"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for item in tiny_model.path.iterdir():
        if "token" in item.name or item.name == "chat_template.jinja":
            shutil.copy(item, folder / item.name)
    tied = ResolvedModel("tied", "local", folder, "tied")
    adapter = Variant("head", "key-head", tied, "adapter",
                      _adapter(folder, tmp_path / "head", seed=4, targets=["lm_head", "q_proj"]))

    reference = _outputs(_backend(tied))
    backend = _backend(tied)
    backend.activate(adapter)
    assert backend._merged is None
    assert _gap([s.logprobs for s in backend.score_texts(TEXTS)], reference["scores"]) > 0.1
    with backend.as_base():
        _identical(_outputs(backend), reference)
    backend.activate(Variant("base", "base", tied, "base"))
    _identical(_outputs(backend), reference)
