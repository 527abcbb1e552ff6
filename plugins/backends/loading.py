"""What the backends share: the transformers backend itself (the ``hf`` backend, and the
copy of the base that the ``vllm`` backend keeps for log-likelihood work and fallbacks),
lm-eval's model around it, and cutting a generation at its stop strings."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import Field

import harness
from harness import (
    ResolvedModel,
    TokenMoments,
    TokenScores,
    Variant,
    load_causal_lm,
    load_tokenizer,
    pick_device,
    pick_dtype,
)


class HFOptions(harness.Options):
    batch_size: int = Field(default=8, gt=0)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: longest sequence scored or generated from; default: the model's own limit
    max_length: int | None = Field(default=None, gt=1)


class HFBackend(harness.Backend):
    """The transformers backend: one base in memory, peft adapters switched in place, the
    active one merged into copies of the weights it touches (``MergedAdapter``)."""

    Options = HFOptions

    def __init__(self, options: HFOptions | None = None) -> None:
        self.options = options or HFOptions()
        self.model: Any = None  # the module that is called: base, base+adapter, or full weights
        self._base: Any = None
        self._peft: Any = None
        self._stacked: tuple[Any, Any] | None = None  # (parent weights folder, peft model)
        self._adapters: set[str] = set()
        self._merged: MergedAdapter | None = None  # the active adapter, merged into copies
        self._buffers: dict[str, Any] = {}  # MergedAdapter.read's copies, reused by the next
        self._peft_on = False  # the active adapter runs through peft's layers on the base
        self._lm_eval: dict[int, Any] = {}
        self.tokenizer: Any = None
        self.device = "cpu"
        self.active: Variant | None = None

    # -- lifecycle ----------------------------------------------------------------

    def load(self, model: ResolvedModel) -> None:
        self.device = pick_device(self.options.device)
        self._dtype = pick_dtype(self.options.dtype, self.device)
        self._resolved = model
        self._buffers.clear()  # another base: its layers are not the same
        self.tokenizer = load_tokenizer(model.path, trust_remote_code=model.trust_remote_code)
        self._base = load_causal_lm(model.path, device=self.device, dtype=self._dtype,
                                    trust_remote_code=model.trust_remote_code)
        self.model = self._base

    def activate(self, variant: Variant) -> None:
        # Whatever came before, the base's own tensors are back and its adapters are off:
        # as_base() inside any variant, and the base itself, run the untouched weights.
        self._unmerge()
        if self._peft is not None:
            self._peft.base_model.disable_adapter_layers()
        self._peft_on = False
        if variant.kind == "weights":
            # A fully tuned model is a different set of weights: load it beside the base.
            self.model = self._load(variant.path)
        elif variant.kind == "adapter" and variant.base_path is not None:
            self.model = self._stacked_adapter(variant)
        elif variant.kind == "adapter":
            self._activate_adapter(variant)
            self.model = self._base
        else:
            self.model = self._base
        self.active = variant

    def _load(self, path: Any) -> Any:
        return load_causal_lm(path, device=self.device, dtype=self._dtype,
                              trust_remote_code=self._resolved.trust_remote_code)

    def _stacked_adapter(self, variant: Variant) -> Any:
        """An adapter trained on another variant (``from``): it applies to that parent's
        merged weights, loaded beside the base; siblings on the same parent share them."""
        from peft import PeftModel

        name = _adapter_name(variant)
        held_path, peft = self._stacked or (None, None)
        if held_path != variant.base_path:
            peft = PeftModel.from_pretrained(self._load(variant.base_path), str(variant.path),
                                             adapter_name=name)
            peft.eval()
            self._stacked = (variant.base_path, peft)
        elif name not in peft.peft_config:
            peft.load_adapter(str(variant.path), adapter_name=name)
        peft.set_adapter(name)
        self._merged = MergedAdapter.merge(peft, name)
        return peft

    def _activate_adapter(self, variant: Variant) -> None:
        self._merged = MergedAdapter.read(self._base, variant.path, self._buffers)
        if self._merged is not None:  # a plain LoRA: merged from its files, no peft layers
            return
        from peft import PeftModel

        name = _adapter_name(variant)
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._base, str(variant.path), adapter_name=name)
            self._peft.eval()
        elif name not in self._adapters:
            self._peft.load_adapter(str(variant.path), adapter_name=name)
        self._adapters.add(name)
        self._peft.base_model.enable_adapter_layers()
        self._peft.set_adapter(name)
        self._peft_on = True
        self._merged = MergedAdapter.merge(self._peft, name)

    def _unmerge(self) -> None:
        if self._merged is not None:
            self._merged.restore()
            self._merged = None

    def close(self) -> None:
        self.model = self._base = self._peft = self._stacked = self._merged = None
        self._buffers.clear()
        self._lm_eval.clear()

    # -- scoring --------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        if self.options.max_length:
            return self.options.max_length
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def prefix_token_id(self) -> int:
        """The token every text is scored after, as lm-eval does: BOS, else EOS."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def score_texts(self, texts: Sequence[str], stride: int | None = None) -> list[TokenScores]:
        """Log-probability of every token of each text, given the tokens before it.

        A text longer than the context is scored in windows of ``max_length`` tokens,
        each predicting ``stride`` new tokens after the ones before them; by default
        ``stride = max_length``, lm-eval's ``loglikelihood_rolling`` (disjoint windows).
        The windows come from lm-eval's own ``get_rolling_token_windows``.
        """
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        width = self.max_length
        stride = min(stride or width, width)
        encoded = [self.encode(text) for text in texts]
        windows: list[tuple[int, list[int], list[int]]] = []  # (text index, input, targets)
        for index, ids in enumerate(encoded):
            pairs = get_rolling_token_windows(ids, self.prefix_token_id, width, width - stride + 1)
            for context, predicted in map(make_disjoint_window, pairs):
                windows.append((index, context + predicted[:-1], predicted))
        picked = self.score_windows([(inputs, targets) for _, inputs, targets in windows])
        logprobs: list[list[float]] = [[] for _ in texts]
        for (index, _, _), values in zip(windows, picked):
            logprobs[index].extend(values)
        return [TokenScores(ids, values, len(text.encode("utf-8")))
                for text, ids, values in zip(texts, encoded, logprobs)]

    def _forward(self, rows: Sequence[list[int]]) -> Any:
        """Logits (float32) at every position of right-padded rows."""
        import torch

        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device),
                                attention_mask=mask.to(self.device)).logits
        return logits.float()

    def score_windows(self, windows: Sequence[tuple[list[int], list[int]]]) -> list[list[float]]:
        """For each (input, targets): log P(target) at the input's last len(targets) positions."""
        results: list[list[float]] = []
        batch = self.options.batch_size
        for start in range(0, len(windows), batch):
            chunk = windows[start : start + batch]
            logits = self._forward([inputs for inputs, _ in chunk]).cpu()
            for row, (inputs, targets) in zip(logits, chunk):
                positions = row[len(inputs) - len(targets) : len(inputs)]
                picked = positions.gather(-1, _column(targets)).squeeze(-1)
                results.append((picked - positions.logsumexp(-1)).tolist())
        return results

    def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        """Full next-token log-distributions over each continuation's tokens, given its prompt.

        One float32 tensor ``[continuation tokens, vocabulary]`` per pair, on the CPU:
        what token-level divergences between two models need (the ``drift`` evaluator).
        """
        rows = []
        for prompt, continuation in pairs:
            context = [self.prefix_token_id, *self.encode(prompt)]
            target = self.encode(continuation)[: self.max_length - 1]
            context = context[-(self.max_length - len(target)):]  # keep the prompt's end
            rows.append((context + target, len(target)))
        return list(self._last_distributions(rows))

    def token_moments(self, texts: Sequence[str]) -> list[TokenMoments]:
        """Each text's first ``max_length - 1`` tokens, after the prefix token: their
        log-probabilities and the mean and standard deviation of the log-probability under
        the next-token distribution at each position (Min-K%++'s normalisers)."""
        rows = [[self.prefix_token_id, *self.encode(text)[: self.max_length - 1]]
                for text in texts]
        results: list[TokenMoments] = []
        for ids, logdist in zip(rows, self._last_distributions([(r, len(r) - 1) for r in rows])):
            targets = ids[1:]
            probs = logdist.exp()
            means = (probs * logdist).sum(-1)
            stds = ((probs * logdist.square()).sum(-1) - means.square()).clamp_min(0).sqrt()
            picked = logdist.gather(-1, _column(targets)).squeeze(-1) if targets else means
            results.append(TokenMoments(picked.tolist(), means.tolist(), stds.tolist()))
        return results

    def _last_distributions(self, rows: Sequence[tuple[list[int], int]]) -> Iterator[Any]:
        """For each (token ids, n): the next-token log-distributions that predict the last
        n tokens (float32 ``[n, vocabulary]``, on the CPU), batched."""
        for start in range(0, len(rows), self.options.batch_size):
            chunk = rows[start : start + self.options.batch_size]
            inputs = [ids[:-1] if len(ids) > 1 else ids for ids, _ in chunk]
            logits = self._forward(inputs).cpu()
            for row, given, (_, n) in zip(logits, inputs, chunk):
                yield row[len(given) - n : len(given)].log_softmax(-1)

    def chat_prompt(self, user_text: str) -> str:
        """One user turn in the model's chat template, ready for the reply (the text itself
        when the tokenizer has no template)."""
        if not getattr(self.tokenizer, "chat_template", None):
            return user_text
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without special tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @contextmanager
    def as_base(self) -> Iterator[None]:
        """Score and generate with the untouched base while inside the block: for an adapter
        on the base, its own tensors are put back (no arithmetic, so bit for bit) and the
        adapter layers are off; the merged copies go back in afterwards."""
        active = self.active
        if active is None or active.kind == "base":
            yield
            return
        model = self.model
        on_base = active.kind == "adapter" and active.base_path is None  # not a separate model
        merged = self._merged if on_base else None
        peft_on = on_base and self._peft_on
        if merged is not None:
            merged.restore()
        if peft_on:
            self._peft.base_model.disable_adapter_layers()
        self.model = self._base
        try:
            yield
        finally:
            self.model = model
            if peft_on:
                self._peft.base_model.enable_adapter_layers()
            if merged is not None:
                merged.apply()

    def generate(self, prompts: Sequence[str], max_new_tokens: int,
                 stop: Sequence[str] = ()) -> list[str]:
        """Greedy completions, batched with left padding, cut at the first stop string."""
        import torch

        outputs: list[str] = []
        tok = self.tokenizer
        previous = tok.padding_side, tok.truncation_side
        tok.padding_side = "left"
        tok.truncation_side = "left"  # a prompt too long keeps its end, next to the answer
        try:
            for start in range(0, len(prompts), self.options.batch_size):
                chunk = list(prompts[start : start + self.options.batch_size])
                enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False,
                          truncation=True, max_length=self.max_length - max_new_tokens)
                enc = {k: v.to(self.device) for k, v in enc.items()}
                with torch.inference_mode():
                    generated = self.model.generate(
                        **enc, max_new_tokens=max_new_tokens, do_sample=False,
                        pad_token_id=tok.pad_token_id,
                    )
                new_tokens = generated[:, enc["input_ids"].shape[1]:]
                outputs.extend(cut_at_stop(text, stop) for text in
                               tok.batch_decode(new_tokens, skip_special_tokens=True))
        finally:
            tok.padding_side, tok.truncation_side = previous
        return outputs

    def route(self) -> dict[str, Any]:
        """How the active variant is served (``cells.backend_path``): always here."""
        return {"path": "hf"}

    def lm_eval_model(self) -> Any:
        """An lm-eval ``HFLM`` around the model already in memory (made once per model)."""
        key = id(self.model)
        if key not in self._lm_eval:
            self._lm_eval[key] = quiet_hflm()(
                pretrained=self.model, tokenizer=self.tokenizer,
                batch_size=self.options.batch_size, max_length=self.options.max_length,
            )
        return self._lm_eval[key]


class MergedAdapter:
    """One adapter merged into copies of the weights it touches: a forward pass then costs what
    the base's costs, where peft's unmerged layers add the adapter's matrix products to every
    linear layer (a variant evaluated 1.16-1.23 times as long as its base;
    bench/many_variants.py).

    The base's tensors are never written. Unmerging in float (peft's ``unmerge``) does not
    give them back exactly; swapping the originals back in does, without arithmetic, so the
    base scores bit for bit as if no adapter had been loaded. The price is one copy of the
    touched weights: for a plain LoRA read from its files, kept by the backend and written
    over by the next adapter (allocating the copies anew per variant made some processes
    evaluate variants 13-38% slower than their base; bench/many_variants.py); otherwise
    freed once the adapter is no longer active.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        #: (base layer, {parameter: original tensor}, {parameter: merged}, peft layer or None)
        self.layers: list[tuple[Any, dict[str, Any], dict[str, Any], Any]] = []

    @classmethod
    def read(cls, model: Any, path: Any,
             buffers: dict[str, Any] | None = None) -> MergedAdapter | None:
        """A plain LoRA adapter (linear layers only; no DoRA, bias, extra modules or other
        variant) merged from its files into ``model``'s layers, without peft building its
        layers into the model: that is Python work on every module, more with every adapter
        already built in (SmolLM2-135M, one thread: 0.6-0.8 s of CPU per adapter against
        0.1 s read this way, a base evaluation on `capitals` being 7 s). None: not such an
        adapter (peft loads it instead). Scaling as peft's ``LoraLayer``: alpha / r
        (alpha / sqrt(r) with rsLoRA), r and alpha through the config's patterns.

        ``buffers`` (module name -> tensor) keeps each layer's merged copy for the next
        adapter to write into, instead of allocating every copy again for each variant
        (hundreds of MiB freed and allocated per activation otherwise); the caller must not
        reuse them while this adapter's copies are applied."""
        import math

        import torch
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import load_peft_weights
        from peft.utils.other import get_pattern_key

        config = LoraConfig.from_pretrained(str(path))  # another method's config, if not LoRA
        if type(config) is not LoraConfig or not _plain_lora_config(config):
            return None
        pairs: dict[str, dict[str, Any]] = {}
        for key, tensor in load_peft_weights(str(path), device=_device_of(model)).items():
            module, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
            if part not in ("A.weight", "B.weight"):
                return None
            pairs.setdefault(module, {})[part[0]] = tensor
        tied = _tied_parameters(model)
        merged = cls(str(path))
        with torch.no_grad():
            for name, pair in pairs.items():
                try:
                    layer = model.get_submodule(name)
                except AttributeError:
                    return None
                if isinstance(layer, BaseTunerLayer):  # built in by an earlier adapter, off
                    layer = layer.get_base_layer()
                r = config.rank_pattern.get(get_pattern_key(config.rank_pattern, name), config.r)
                alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern, name),
                                                 config.lora_alpha)
                weight = getattr(layer, "weight", None)
                if (type(layer) is not torch.nn.Linear or set(pair) != {"A", "B"}
                        or not _mergeable(weight, tied)
                        or pair["A"].shape != (r, weight.shape[1])
                        or pair["B"].shape != (weight.shape[0], r)):
                    return None  # nothing is swapped in before the end
                scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
                out = None if buffers is None else buffers.get(name)
                copy = _merged_weight(weight.data, pair["B"], pair["A"], scaling, out=out)
                if buffers is not None:
                    buffers[name] = copy
                merged.layers.append((layer, {"weight": weight.data}, {"weight": copy}, None))
        merged.apply()
        return merged

    @classmethod
    def merge(cls, peft: Any, name: str) -> MergedAdapter | None:
        """Adapter ``name``, active in ``peft``, merged into copies (a plain LoRA layer in one
        fused product, DoRA and the rest by peft's own ``merge``); None leaves it unmerged,
        applied by peft's layers as before: an adapter peft cannot merge (aLoRA, Arrow), a
        quantised base layer, or a weight tied to another module (an embedding tied to the
        output layer would change both)."""
        import torch
        from peft.tuners.tuners_utils import BaseTunerLayer

        touched = [m for m in peft.modules() if isinstance(m, BaseTunerLayer)
                   and any(name in getattr(m, part, {}) for part in m.adapter_layer_names)]
        tied = _tied_parameters(peft)
        for module in touched:
            weights = list(module.get_base_layer().parameters(recurse=False))
            if not weights or not all(_mergeable(w, tied) for w in weights):
                return None
        merged = cls(name)
        try:
            with torch.no_grad():
                for module in touched:
                    base = module.get_base_layer()
                    originals = {key: w.data for key, w in base.named_parameters(recurse=False)}
                    merged.layers.append((base, originals, {}, module))
                    if _plain_lora(module, name):
                        base.weight.data = _merged_weight(
                            originals["weight"], module.lora_B[name].weight,
                            module.lora_A[name].weight, module.scaling[name],
                            module.fan_in_fan_out)
                        module.merged_adapters = [name]
                    else:  # DoRA and the rest: peft's own merge, into a copy
                        for key, w in base.named_parameters(recurse=False):
                            w.data = originals[key].clone()
                        module.merge(adapter_names=[name])
                    merged.layers[-1][2].update(
                        (key, w.data) for key, w in base.named_parameters(recurse=False))
        except (NotImplementedError, RuntimeError):  # peft cannot merge it, or no memory for it
            merged.restore()
            return None
        return merged

    def restore(self) -> None:
        """The original tensors back in their layers (peft told nothing is merged)."""
        for base, originals, _, module in self.layers:
            for key, tensor in originals.items():
                getattr(base, key).data = tensor
            if module is not None:
                module.merged_adapters = []

    def apply(self) -> None:
        """The merged copies in their layers."""
        for base, _, merged, module in self.layers:
            for key, tensor in merged.items():
                getattr(base, key).data = tensor
            if module is not None:
                module.merged_adapters = [self.name]


#: LoraConfig fields that may differ from their defaults in an adapter ``read`` merges: the
#: rest (DoRA, bias, modules to save, initialisations that rewrite the base, layer variants)
#: change what the adapter computes, and peft loads such an adapter itself
_PLAIN_LORA_FIELDS = {
    "r", "lora_alpha", "lora_dropout", "use_rslora", "rank_pattern", "alpha_pattern",
    "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
    "task_type", "base_model_name_or_path", "revision", "inference_mode", "peft_version",
    "auto_mapping", "init_lora_weights",
}


def _plain_lora_config(config: Any) -> bool:
    import dataclasses

    if config.init_lora_weights not in (True, False, "gaussian"):  # e.g. PiSSA: a new base
        return False
    default = type(config)()
    return all(getattr(config, f.name) == getattr(default, f.name)
               for f in dataclasses.fields(config) if f.name not in _PLAIN_LORA_FIELDS)


def _plain_lora(module: Any, name: str) -> bool:
    """A LoRA adapter on a plain linear layer, no DoRA or other variant, no bias of its own."""
    from peft.tuners.lora.layer import Linear

    return (type(module) is Linear and name not in module.lora_variant
            and not module.lora_bias[name])


def _tied_parameters(model: Any) -> set[int]:
    """The ids of parameters held by more than one module (an output layer tied to the
    embedding): merging into one would change the other."""
    seen: set[int] = set()
    tied: set[int] = set()
    for _, parameter in model.named_parameters(remove_duplicate=False):
        (tied if id(parameter) in seen else seen).add(id(parameter))
    return tied


def _mergeable(weight: Any, tied: set[int]) -> bool:
    """A plain floating-point parameter of its own (not quantised, not tied)."""
    import torch

    return (type(weight) is torch.nn.Parameter and weight.dtype.is_floating_point
            and id(weight) not in tied)


def _merged_weight(weight: Any, lora_b: Any, lora_a: Any, scaling: float,
                   fan_in_fan_out: bool = False, out: Any = None) -> Any:
    """``weight + scaling * B @ A`` (transposed for a fan-in-fan-out layer) as a new tensor,
    in one fused product: what peft's merge computes, where cloning the weight and merging
    into the clone passes over it four times (B @ A, its scaling, the clone, the sum).
    Computed in float32 at least, rounded once to the weight's precision; into ``out`` when
    it is a float32 tensor of the weight's shape, dtype and device (a float32 weight)."""
    import torch

    dtype = torch.promote_types(lora_b.dtype, torch.float32)
    first, second = (lora_a.T, lora_b.T) if fan_in_fan_out else (lora_b, lora_a)
    if (out is not None and weight.dtype == dtype and out.dtype == dtype
            and out.shape == weight.shape and out.device == weight.device):
        return torch.addmm(weight, first.to(dtype), second.to(dtype), alpha=scaling, out=out)
    merged = torch.addmm(weight.to(dtype), first.to(dtype), second.to(dtype), alpha=scaling)
    return merged.to(weight.dtype)


def _device_of(model: Any) -> str:
    return str(next(model.parameters()).device)


def _adapter_name(variant: Variant) -> str:
    """The name peft keeps a variant's adapter under: the start of its key, with any
    character a torch module name may not hold ("." among them) made "_"."""
    return re.sub(r"\W", "_", variant.key[:16])


def quiet_hflm() -> type:
    """lm-eval's ``HFLM``, whose request loops honour ``TQDM_DISABLE`` (which ``harness run``
    sets under its own progress display): lm-eval passes ``disable_tqdm=False`` explicitly."""
    import os

    from lm_eval.models.huggingface import HFLM

    if not os.environ.get("TQDM_DISABLE"):
        return HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm=True):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm=True):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm=True):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the earliest of the stop strings."""
    for marker in stop:
        if marker and marker in text:
            text = text[: text.index(marker)]
    return text


def _column(values: list[int]) -> Any:
    import torch

    return torch.tensor(values).unsqueeze(-1)
