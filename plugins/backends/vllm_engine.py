"""The vLLM backend: one engine per base model, every LoRA variant a LoRA request on it.

- **Generation** (``generate``, lm-eval's ``generate_until``) goes through the engine,
  every prompt of a call in one batch that vLLM schedules itself.
- **Log-likelihood** work goes where ``loglikelihood`` says: ``"hf"`` (the default) to a
  transformers copy of the same base with the same adapter, which bench/vllm_routes.py
  measured faster for it; ``"vllm"`` to the engine's prompt log-probabilities
  (``score_texts`` and lm-eval's ``loglikelihood``). Work that needs whole next-token
  distributions (``token_moments``, ``continuation_logprobs``) always goes to
  transformers: vLLM returns only the top few log-probabilities of a position.
- **Variants vLLM cannot serve as a LoRA request** (DoRA, ``modules_to_save``, a rank
  above ``max_lora_rank``: vLLM's own ``PEFTHelper`` decides), fully tuned weights, and
  adapters trained on top of another variant (``from``: they apply to the parent's
  merged weights, which the engine does not hold) are evaluated on the transformers copy. Each cell records its path in
  ``cells.backend_path`` (``vllm``, ``vllm-lora`` or ``hf``) and the reason in
  ``cells.info``.
- **Adapter-applied check**: before a LoRA variant is evaluated on the engine, a few
  greedy continuations from the engine are scored token by token under peft's adapter
  in transformers; a mean log-probability gap above ``check_tolerance`` fails the
  variant's cells, saying whether the engine's outputs sit closer to the untouched base.

vLLM starts worker processes: a script that drives this backend in-process must guard
its entry point with ``if __name__ == "__main__":`` (``harness run`` does).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import Field

import harness
from harness import ResolvedModel, TokenMoments, TokenScores, Variant, pick_device, pick_dtype

from harness_plugins.backends.loading import HFBackend, HFOptions, cut_at_stop, quiet_hflm

#: prompts of the adapter-applied check: plain text in a few registers
CHECK_PROMPTS = (
    "The capital of France is",
    "Question: What is two plus three?\nAnswer:",
    "Once upon a time, in a small village,",
    "def add(a, b):\n    ",
    "The three primary colours are",
    "Dear team, thank you for",
    "In 1969, the first people to walk on the Moon",
    "A recipe for pancakes needs",
)


class VLLMOptions(harness.Options):
    # the transformers copy (log-likelihood work, the adapter check, fallbacks)
    batch_size: int = Field(default=8, gt=0, description="batch size of the transformers copy")
    device: str = Field(default="auto", description="device of the transformers copy")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="weights' dtype in the engine and the copy; auto: "
                                    "bfloat16 on a GPU, float32 on a CPU, for each of the "
                                    "two on its own device (the engine takes a GPU when "
                                    "there is one)")
    max_length: int | None = Field(default=None, gt=1, description=(
        "longest sequence; default: the model's own limit"))
    # the engine
    max_loras: int = Field(default=4, gt=0, description="adapters resident in one batch")
    max_lora_rank: int = Field(default=64, gt=0, description=(
        "the largest LoRA rank served by the engine; larger adapters go to transformers"))
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1, description=(
        "share of GPU memory (of CPU memory on vLLM's CPU build) the engine may take; the "
        "rest is left for the transformers copy"))
    kv_cache_gb: float | None = Field(default=None, gt=0, description=(
        "KV-cache size in GiB; default: vLLM's own choice on a GPU, 1 GiB on a CPU"))
    enforce_eager: bool = Field(default=False, description="no CUDA graphs (faster start)")
    loglikelihood: Literal["hf", "vllm"] = Field(default="hf", description=(
        "where score_texts and lm-eval's loglikelihood go"))
    # the adapter-applied check
    check_adapter: bool = True
    check_prompts: int = Field(default=4, gt=0, le=len(CHECK_PROMPTS))
    check_tokens: int = Field(default=8, gt=0)
    check_tolerance: float = Field(default=0.1, gt=0, description=(
        "largest mean |log p(engine) - log p(transformers)| per token that passes"))


class AdapterNotApplied(RuntimeError):
    """vLLM's outputs for a LoRA request do not match the adapter applied by peft."""


def adapter_gap(engine: Sequence[float], adapter: Sequence[float],
                base: Sequence[float]) -> tuple[float, float, float]:
    """Mean absolute per-token log-probability gaps: engine to adapter, engine to base, and
    adapter to base (how far the adapter moves the model at all)."""
    n = max(len(engine), 1)
    to_adapter = sum(abs(e - a) for e, a in zip(engine, adapter)) / n
    to_base = sum(abs(e - b) for e, b in zip(engine, base)) / n
    moved = sum(abs(a - b) for a, b in zip(adapter, base)) / n
    return to_adapter, to_base, moved


def check_message(name: str, to_adapter: float, to_base: float, moved: float,
                  tokens: int, tolerance: float) -> str | None:
    """Why the engine fails the adapter-applied check, or None when it passes."""
    if to_adapter <= tolerance:
        return None
    verdict = ("its outputs sit closer to the untouched base: the adapter was not applied"
               if to_base < to_adapter else "its outputs match neither the adapter nor the base")
    return (f"vLLM served adapter {name!r} wrongly: over {tokens} greedy tokens its "
            f"log-probabilities differ from peft's by {to_adapter:.3f} on average "
            f"(tolerance {tolerance}), from the base by {to_base:.3f} (the adapter moves the "
            f"base by {moved:.3f}); {verdict}")


class VLLMBackend(harness.Backend):
    """One vLLM engine with LoRA enabled, and a transformers copy of the same base."""

    Options = VLLMOptions
    #: Python packages this backend imports, with how to install them (checked when a
    #: suite is validated)
    needs_packages = {"vllm": "pip install 'tune-harness[vllm]' (on a CPU: scripts/vllm-cpu-venv)"}

    def __init__(self, options: VLLMOptions | None = None) -> None:
        self.options = options or VLLMOptions()
        self.llm: Any = None
        self.hf: HFBackend | None = None
        self.engine_id: str | None = None
        self.active: Variant | None = None
        self._lora: Any = None  # the active LoRARequest, or None for the base
        self._path = "vllm"  # how the active variant is served: vllm, vllm-lora or hf
        self._reason: str | None = None
        self._check: dict[str, Any] | None = None
        self._lora_ids: dict[str, int] = {}
        self._base_only = False
        self._lm: Any = None

    # -- lifecycle ----------------------------------------------------------------

    def load(self, model: ResolvedModel) -> None:
        # vLLM logs every engine step at INFO, over the run's progress display; warnings
        # and errors still show (VLLM_LOGGING_LEVEL set by the user wins)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        opts = self.options
        self.hf = HFBackend(HFOptions(batch_size=opts.batch_size, device=opts.device,
                                      dtype=opts.dtype, max_length=opts.max_length))
        self.hf.load(model)
        on_gpu = pick_device("auto").startswith("cuda")
        dtype = pick_dtype(opts.dtype, "cuda" if on_gpu else "cpu")
        kv_gb = opts.kv_cache_gb if opts.kv_cache_gb is not None else (None if on_gpu else 1.0)
        self.llm = LLM(
            model=str(model.path), tokenizer=str(model.path),
            trust_remote_code=model.trust_remote_code,
            dtype=str(dtype).removeprefix("torch."), max_model_len=self.hf.max_length,
            enable_lora=True, max_loras=opts.max_loras, max_lora_rank=opts.max_lora_rank,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            kv_cache_memory_bytes=int(kv_gb * 2**30) if kv_gb else None,
            enforce_eager=opts.enforce_eager, seed=0,
        )
        self.engine_id = uuid.uuid4().hex[:12]

    def activate(self, variant: Variant) -> None:
        self.active, self._lora, self._reason, self._check = variant, None, None, None
        if variant.kind == "base":
            self.hf.activate(variant)
            self._path = "vllm"
            return
        if variant.kind == "weights":
            self._route_to_hf(variant, "fully tuned weights are a second model; one engine "
                                       "serves only its base and LoRA adapters")
            return
        if variant.base_path is not None:
            self._route_to_hf(variant, f"trained on top of {variant.parent!r}: its adapter applies "
                                       "to that variant's merged weights, not to the base the "
                                       "engine serves")
            return
        reason = self._unsupported(variant)
        if reason:
            self._route_to_hf(variant, reason)
            return
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(variant.key, len(self._lora_ids) + 1)
        self._lora = LoRARequest(variant.name, lora_id, str(variant.path))
        self._path = "vllm-lora"
        self.hf.activate(variant)  # the same adapter in peft: the check's reference
        if self.options.check_adapter:
            self._check_adapter(variant)

    def _route_to_hf(self, variant: Variant, reason: str) -> None:
        self.hf.activate(variant)
        self._path, self._reason = "hf", reason

    def _unsupported(self, variant: Variant) -> str | None:
        """vLLM's own verdict on an adapter folder (``PEFTHelper.validate_legal``)."""
        from vllm.lora.peft_helper import PEFTHelper

        lora_config = self.llm.llm_engine.vllm_config.lora_config
        try:
            helper = PEFTHelper.from_local_dir(str(variant.path), self.hf.max_length)
            helper.validate_legal(lora_config)
        except (ValueError, TypeError, KeyError) as exc:
            return f"vLLM cannot serve this adapter as a LoRA request: {exc}"
        return None

    def _check_adapter(self, variant: Variant) -> None:
        """Greedy tokens from the engine, scored under peft's adapter and under the base."""
        from vllm import SamplingParams

        prompts = [self.hf.encode(text) for text in CHECK_PROMPTS[: self.options.check_prompts]]
        params = SamplingParams(temperature=0, max_tokens=self.options.check_tokens,
                                logprobs=0)
        outputs = self._run(prompts, params, self._lora)
        engine, windows = [], []
        for prompt, output in zip(prompts, outputs):
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            engine.extend(_picked(step, token) for step, token in zip(completion.logprobs, ids))
            windows.append((prompt + ids[:-1], ids))
        adapter = [lp for row in self.hf.score_windows(windows) for lp in row]
        with self.hf.as_base():
            base = [lp for row in self.hf.score_windows(windows) for lp in row]
        to_adapter, to_base, moved = adapter_gap(engine, adapter, base)
        self._check = {"tokens": len(engine), "to_adapter": round(to_adapter, 5),
                       "to_base": round(to_base, 5), "adapter_moves_base": round(moved, 5),
                       "tolerance": self.options.check_tolerance,
                       # an adapter that barely moves the base cannot be told from it
                       "decisive": moved > self.options.check_tolerance}
        message = check_message(variant.name, to_adapter, to_base, moved, len(engine),
                                self.options.check_tolerance)
        if message:
            raise AdapterNotApplied(message)

    def route(self) -> dict[str, Any]:
        """How the active variant is served, for ``cells.backend_path`` and ``cells.info``."""
        info: dict[str, Any] = {
            "path": self._path, "engine": self.engine_id,
            "generate": "vllm" if self._on_engine else "hf",
            "loglikelihood": self.options.loglikelihood if self._on_engine else "hf",
        }
        if self._reason:
            info["reason"] = self._reason
        if self._check:
            info["adapter_check"] = self._check
        return info

    def close(self) -> None:
        if self.llm is not None:
            core = getattr(self.llm.llm_engine, "engine_core", None)
            if core is not None:  # stop the engine's worker processes now, not at exit
                core.shutdown()
        self.llm = None
        if self.hf is not None:
            self.hf.close()
        self._lm = None

    # -- the engine ---------------------------------------------------------------------

    @property
    def _on_engine(self) -> bool:
        return self._path != "hf"

    @property
    def _request(self) -> Any:
        return None if self._base_only else self._lora

    def _run(self, prompts: Sequence[list[int]], params: Any, lora: Any) -> list[Any]:
        from vllm.inputs import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                 params, lora_request=lora, use_tqdm=False)

    def engine_generate(self, contexts: Sequence[list[int]], max_new_tokens: int,
                        stop: Sequence[str], temperature: float = 0.0,
                        seed: int | None = None, **sampling: Any) -> list[str]:
        """Completions of token prompts from the engine, cut at the first stop string;
        greedy unless a temperature is given (``sampling``: top_p, top_k)."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens,
                                stop=[s for s in stop if s] or None, seed=seed, **sampling)
        outputs = self._run(contexts, params, self._request)
        return [cut_at_stop(o.outputs[0].text, stop) for o in outputs]

    def engine_logprobs(self, sequences: Sequence[list[int]]) -> list[list[tuple[float, bool]]]:
        """For each token sequence, every token after the first: (its log-probability given
        the tokens before it, whether it was the most likely token there)."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
        # With LoRA enabled, vLLM computes prompt log-probabilities with one LoRA index per
        # request, not per token (vLLM issues 16668, 29955): a batch of several prompts
        # fails, the base's included. One prompt per call gets the right numbers.
        outputs = [out for sequence in sequences
                   for out in self._run([sequence], params, self._request)]
        results = []
        for sequence, output in zip(sequences, outputs):
            steps = output.prompt_logprobs[1:]
            results.append([(_picked(step, token), step[token].rank == 1)
                            for step, token in zip(steps, sequence[1:])])
        return results

    # -- the Backend contract -------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self.hf.tokenizer

    @property
    def max_length(self) -> int:
        return self.hf.max_length

    def generate(self, prompts: Sequence[str], max_new_tokens: int,
                 stop: Sequence[str] = ()) -> list[str]:
        """Greedy completions; prompts too long keep their end, as on the hf backend."""
        if not self._on_engine:
            return self.hf.generate(prompts, max_new_tokens, stop)
        contexts = [_keep_end(self.hf.encode(p), self.max_length - max_new_tokens)
                    for p in prompts]
        return self.engine_generate(contexts, max_new_tokens, stop)

    def score_texts(self, texts: Sequence[str], stride: int | None = None) -> list[TokenScores]:
        if not self._on_engine or self.options.loglikelihood == "hf":
            return self.hf.score_texts(texts, stride)
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        # The engine takes a prompt of at most max_length - 1 tokens (it must also generate
        # one), and a window's prompt holds its context token too: windows are two tokens
        # shorter than the copy's.
        width = self.max_length - 2
        stride = min(stride or width, width)
        encoded = [self.hf.encode(text) for text in texts]
        windows: list[tuple[int, list[int], int]] = []  # (text, tokens, predicted count)
        for index, ids in enumerate(encoded):
            pairs = get_rolling_token_windows(ids, self.hf.prefix_token_id, width,
                                              width - stride + 1)
            for context, predicted in map(make_disjoint_window, pairs):
                windows.append((index, context + predicted, len(predicted)))
        scored = self.engine_logprobs([tokens for _, tokens, _ in windows])
        logprobs: list[list[float]] = [[] for _ in texts]
        for (index, _, n), values in zip(windows, scored):
            logprobs[index].extend(lp for lp, _ in values[-n:])
        return [TokenScores(ids, values, len(text.encode("utf-8")))
                for text, ids, values in zip(texts, encoded, logprobs)]

    def token_moments(self, texts: Sequence[str]) -> list[TokenMoments]:
        return self.hf.token_moments(texts)

    def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        return self.hf.continuation_logprobs(pairs)

    def chat_prompt(self, user_text: str) -> str:
        return self.hf.chat_prompt(user_text)

    @contextmanager
    def as_base(self) -> Iterator[None]:
        """The untouched base: no LoRA request on the engine, adapters off in the copy."""
        previous = self._base_only
        self._base_only = True
        try:
            with self.hf.as_base():  # a variant on the copy compares with its base there
                yield
        finally:
            self._base_only = previous

    def lm_eval_model(self) -> Any:
        """lm-eval's ``HFLM`` around the transformers copy, with ``generate_until`` (and,
        with ``loglikelihood = "vllm"``, ``loglikelihood``) answered by the engine."""
        if not self._on_engine:
            return self.hf.lm_eval_model()
        if self._lm is None:  # one per engine: adapters switch in place in the copy's model
            self._lm = _engine_lm(self)
        return self._lm


def _engine_lm(backend: VLLMBackend) -> Any:
    """An ``HFLM`` subclass whose requests go to the engine: lm-eval's own tokenisation,
    context truncation and stop handling, so both paths see the same token ids."""
    hflm_class = quiet_hflm()

    class EngineLM(hflm_class):
        def generate_until(self, requests, disable_tqdm=True):
            by_settings: dict[str, list[int]] = {}
            calls = [req.args for req in requests]
            for index, (_, kwargs) in enumerate(calls):
                by_settings.setdefault(repr(sorted(kwargs.items())), []).append(index)
            eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
            results: list[str] = [""] * len(calls)
            for indices in by_settings.values():  # one engine batch per generation setting
                kwargs = dict(calls[indices[0]][1])
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                if eos not in until:
                    until.append(eos)
                # lm-eval's own names for the length, in its order of precedence
                max_new = int(next((kwargs[k] for k in ("max_gen_toks", "max_new_tokens",
                                                        "max_tokens") if k in kwargs),
                                   self.max_gen_toks))
                greedy = not kwargs.get("do_sample", False) or not kwargs.get("temperature")
                contexts = [_keep_end(self.tok_encode(calls[i][0]), self.max_length - max_new)
                            for i in indices]
                sampling = {} if greedy else {
                    "temperature": float(kwargs["temperature"]), "seed": kwargs.get("seed"),
                    **{k: kwargs[k] for k in ("top_p", "top_k") if k in kwargs}}
                texts = backend.engine_generate(contexts, max_new, until, **sampling)
                for i, text in zip(indices, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", calls[i], text)
            return results

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            if backend.options.loglikelihood == "hf":
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            limit = self.max_length - 1  # the engine generates one token after the prompt
            sequences = []
            for _, context, continuation in requests:
                if not context or not continuation or len(continuation) >= limit:
                    raise ValueError(f"a loglikelihood request needs a context and a "
                                     f"continuation of 1 to {limit - 1} tokens on the engine; "
                                     f"got {len(context)} and {len(continuation)}")
                sequences.append((context + continuation)[-limit:])
            results = []
            for (key, _, continuation), scored in zip(requests, backend.engine_logprobs(sequences)):
                picked = scored[-len(continuation):]
                answer = (sum(lp for lp, _ in picked), all(greedy for _, greedy in picked))
                results.append(answer)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
            return results

        def loglikelihood_rolling(self, requests, disable_tqdm=True):
            """Whole texts in rolling windows: the backend's ``score_texts`` (lm-eval's own
            windows, two tokens shorter on the engine)."""
            if backend.options.loglikelihood == "hf":
                return super().loglikelihood_rolling(requests, disable_tqdm=True)
            texts = [req.args[0] for req in requests]
            results = [sum(s.logprobs) for s in backend.score_texts(texts)]
            for text, value in zip(texts, results):
                self.cache_hook.add_partial("loglikelihood_rolling", (text,), value)
            return results

    hf = backend.hf
    return EngineLM(pretrained=hf.model, tokenizer=hf.tokenizer,
                    batch_size=hf.options.batch_size, max_length=backend.max_length)


def _keep_end(ids: list[int], keep: int) -> list[int]:
    """A prompt's last ``keep`` tokens (the end, next to the answer)."""
    if keep <= 0:
        raise ValueError(f"no room for a prompt: the generation length leaves {keep} of the "
                         "context's tokens")
    return ids[-keep:]


def _picked(step: dict[int, Any], token: int) -> float:
    return float(step[token].logprob)


@harness.hookimpl
def harness_register_backends(register):
    register("vllm", VLLMBackend)
