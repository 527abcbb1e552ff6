"""How every component loads a resolved model with transformers, the same way: safetensors
only (pickled weights can run code), a pad token, the device and dtype chosen alike.
Shared by backends, tuners and rewards; torch and transformers load on first call."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pick_device(name: str) -> str:
    """``auto``: CUDA when there is a GPU, else the CPU; any other name as it is."""
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(name: str, device: str) -> Any:
    """``auto``: bfloat16 on CUDA, float32 elsewhere; any other name as torch's dtype."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_causal_lm(path: Any, *, device: str, dtype: Any, trust_remote_code: bool) -> Any:
    """A causal LM from safetensors only, on ``device``, in evaluation mode. A folder saved
    quantised (bitsandbytes, its ``quantization_config`` in config.json) loads quantised,
    placed on ``device`` as it loads: such a model cannot be moved afterwards."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    placed = {"device_map": {"": device}} if getattr(config, "quantization_config", None) else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **placed
    )
    return (model if placed else model.to(device)).eval()


def load_tokenizer(path: Any, *, trust_remote_code: bool) -> Any:
    """The model's tokenizer, with the end-of-sequence token as padding when it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def merge_adapter(base: Path, adapter: Path, out: Path, *, trust_remote_code: bool) -> None:
    """Write ``base`` with the peft ``adapter`` merged into its weights (peft's
    ``merge_and_unload``) and ``base``'s tokenizer to ``out``, as safetensors: the starting
    weights of a variant trained on top of an adapter variant."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True,
                                                 trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code).save_pretrained(out)
