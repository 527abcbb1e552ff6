"""The transformers backend: one base in memory, peft adapters switched in place.

Variants of one base never reload it: the first adapter wraps the loaded model
in a ``PeftModel``, later adapters are added with ``load_adapter``, and the base
itself is scored with the adapter layers disabled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

import harness
from harness.components import Options, ResolvedModel, TokenScores, Variant


class HFOptions(Options):
    batch_size: int = Field(default=8, gt=0)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: longest sequence scored or generated from; default: the model's own limit
    max_length: int | None = Field(default=None, gt=1)


def pick_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_causal_lm(path: Any, *, device: str, dtype: Any, trust_remote_code: bool) -> Any:
    """Load a causal LM from safetensors only (pickled weights can run code)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model.to(device).eval()


def load_tokenizer(path: Any, *, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class HFBackend:
    Options = HFOptions

    def __init__(self, options: HFOptions | None = None) -> None:
        self.options = options or HFOptions()
        self.model: Any = None  # the module that is called: base, base+adapter, or full weights
        self._base: Any = None
        self._peft: Any = None
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
            self.model = load_causal_lm(variant.path, device=self.device, dtype=self._dtype,
                                        trust_remote_code=self._resolved.trust_remote_code)
        elif variant.kind == "adapter":
            self._activate_adapter(variant)
            self.model = self._base
        else:
            if self._peft is not None:
                self._peft.base_model.disable_adapter_layers()
            self.model = self._base
        self.active = variant

    def _activate_adapter(self, variant: Variant) -> None:
        from peft import PeftModel

        name = variant.key[:16]
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._base, str(variant.path), adapter_name=name)
            self._peft.eval()
        elif name not in self._adapters:
            self._peft.load_adapter(str(variant.path), adapter_name=name)
        self._adapters.add(name)
        self._peft.base_model.enable_adapter_layers()
        self._peft.set_adapter(name)

    def close(self) -> None:
        self.model = self._base = self._peft = None
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

    def score_texts(self, texts: Sequence[str]) -> list[TokenScores]:
        """Log-probability of every token of each text, given the texts before it.

        Texts longer than the context are cut to ``max_length`` tokens.
        """
        import torch

        encoded = [
            self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_length - 1]
            for text in texts
        ]
        results: list[TokenScores] = []
        batch = self.options.batch_size
        for start in range(0, len(encoded), batch):
            chunk = encoded[start : start + batch]
            rows = [[self.prefix_token_id, *ids] for ids in chunk]
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                input_ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            with torch.inference_mode():
                logits = self.model(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
                ).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = input_ids[:, 1:].to(self.device)
            picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
            for i, ids in enumerate(chunk):
                text = texts[start + i]
                results.append(TokenScores(list(ids), picked[i, : len(ids)].tolist(),
                                           len(text.encode("utf-8"))))
        return results

    def generate(self, prompts: Sequence[str], max_new_tokens: int,
                 stop: Sequence[str] = ()) -> list[str]:
        """Greedy completions, batched with left padding, cut at the first stop string."""
        import torch

        outputs: list[str] = []
        tok = self.tokenizer
        previous_side = tok.padding_side
        tok.padding_side = "left"
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
                for text in tok.batch_decode(new_tokens, skip_special_tokens=True):
                    for marker in stop:
                        if marker and marker in text:
                            text = text[: text.index(marker)]
                    outputs.append(text)
        finally:
            tok.padding_side = previous_side
        return outputs

    def lm_eval_model(self) -> Any:
        """An lm-eval ``HFLM`` around the model already in memory (made once per model)."""
        key = id(self.model)
        if key not in self._lm_eval:
            from lm_eval.models.huggingface import HFLM

            self._lm_eval[key] = HFLM(
                pretrained=self.model, tokenizer=self.tokenizer,
                batch_size=self.options.batch_size, max_length=self.options.max_length,
            )
        return self._lm_eval[key]


@harness.hookimpl
def harness_register_backends(register):
    register("hf", HFBackend)
