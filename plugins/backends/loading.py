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
    """The transformers backend: one base in memory, peft adapters switched in place."""

    Options = HFOptions

    def __init__(self, options: HFOptions | None = None) -> None:
        self.options = options or HFOptions()
        self.model: Any = None  # the module that is called: base, base+adapter, or full weights
        self._base: Any = None
        self._peft: Any = None
        self._stacked: tuple[Any, Any] | None = None  # (parent weights folder, peft model)
        self._adapters: set[str] = set()
        self._lm_eval: dict[int, Any] = {}
        self.tokenizer: Any = None
        self.device = "cpu"
        self.active: Variant | None = None

    # -- lifecycle ----------------------------------------------------------------

    def load(self, model: ResolvedModel) -> None:
        self.device = pick_device(self.options.device)
        self._dtype = pick_dtype(self.options.dtype, self.device)
        self._resolved = model
        self.tokenizer = load_tokenizer(model.path, trust_remote_code=model.trust_remote_code)
        self._base = load_causal_lm(model.path, device=self.device, dtype=self._dtype,
                                    trust_remote_code=model.trust_remote_code)
        self.model = self._base

    def activate(self, variant: Variant) -> None:
        if variant.kind == "weights":
            # A fully tuned model is a different set of weights: load it beside the base.
            self.model = self._load(variant.path)
        elif variant.kind == "adapter" and variant.base_path is not None:
            self.model = self._stacked_adapter(variant)
        elif variant.kind == "adapter":
            self._activate_adapter(variant)
            self.model = self._base
        else:
            if self._peft is not None:
                self._peft.base_model.disable_adapter_layers()
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
        return peft

    def _activate_adapter(self, variant: Variant) -> None:
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

    def close(self) -> None:
        self.model = self._base = self._peft = self._stacked = None
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
        """Score and generate with the untouched base while inside the block."""
        active = self.active
        if active is None or active.kind == "base":
            yield
            return
        model = self.model
        on_base = active.kind == "adapter" and active.base_path is None  # peft on the base
        if on_base:
            self._peft.base_model.disable_adapter_layers()
        self.model = self._base
        try:
            yield
        finally:
            self.model = model
            if on_base:
                self._peft.base_model.enable_adapter_layers()

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
