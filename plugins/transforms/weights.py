"""What the transforms share: reading a source variant's files, and its full weights (an
adapter merged into the weights it applies to) in memory or written to a folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import harness
from harness import Variant

#: the one adapter file the transforms read: safetensors only (pickled weights can run code)
ADAPTER_FILE = "adapter_model.safetensors"


def adapter_config(source: Variant) -> dict[str, Any]:
    """The peft ``adapter_config.json`` of an adapter variant."""
    return json.loads((Path(source.path) / "adapter_config.json").read_text(encoding="utf-8"))


def adapter_file(source: Variant) -> Path:
    """The adapter's safetensors file; a ValueError naming the variant when there is none."""
    path = Path(source.path) / ADAPTER_FILE
    if not path.is_file():
        raise ValueError(f"variant {source.name!r} has no {ADAPTER_FILE} in {source.path}")
    return path


def quantization_of(folder: Path) -> dict[str, Any] | None:
    """The ``quantization_config`` of a weights folder's config.json, or None."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return config.get("quantization_config")


def refuse_quantized(source: Variant, parent_weights: Path, transform: str) -> None:
    """A transform that computes with full-precision weights cannot take quantised ones:
    the source's weights folder, or the parent weights an adapter source applies to."""
    folder, whose = ((Path(source.path), f"variant {source.name!r}") if source.kind == "weights"
                     else (Path(parent_weights), f"the weights variant {source.name!r} applies to"))
    quantization = quantization_of(folder)
    if quantization is not None:
        method = quantization.get("quant_method", "quantised")
        raise ValueError(f"{transform} needs full-precision weights; {whose} is quantised "
                         f"({method}, {folder})")


def load_weights(folder: Path, *, trust_remote_code: bool) -> Any:
    """A weights folder on the CPU in its stored dtype: the transforms do elementwise
    arithmetic or a merge, which a GPU does not speed up enough to pay for the copy."""
    return harness.load_causal_lm(folder, device="cpu", dtype="auto",
                                  trust_remote_code=trust_remote_code)


def full_weights(source: Variant, parent_weights: Path, *, trust_remote_code: bool) -> Any:
    """The source variant as one plain model: a weights variant as it is, an adapter merged
    into the weights it applies to (peft's ``merge_and_unload``; DoRA too)."""
    if source.kind == "weights":
        return load_weights(source.path, trust_remote_code=trust_remote_code)
    if source.kind != "adapter":
        raise ValueError(f"variant {source.name!r} is the untouched base ({source.kind}); a "
                         "transform takes adapters and weights")
    from peft import PeftModel

    adapter_file(source)
    parent = load_weights(parent_weights, trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(parent, str(source.path)).merge_and_unload()


def tokenizer_folder(source: Variant, parent_weights: Path) -> Path:
    """Where the source's tokenizer lives: a weights variant's own folder when it saved one
    (a full fine-tune does), else the weights the source was made from."""
    if source.kind == "weights" and (Path(source.path) / "tokenizer_config.json").is_file():
        return Path(source.path)
    return Path(parent_weights)


def save_weights(model: Any, out: Path, tokenizer_from: Path, *, trust_remote_code: bool) -> Path:
    """``model`` and the tokenizer of ``tokenizer_from`` as a weights folder (safetensors).
    The tokenizer is copied as it is: ``harness.load_tokenizer`` would add a pad token."""
    from transformers import AutoTokenizer

    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_from, trust_remote_code=trust_remote_code
                                  ).save_pretrained(out)
    return out


def write_full_weights(source: Variant, parent_weights: Path, out: Path, *,
                       trust_remote_code: bool) -> Path:
    """A folder with the source's full weights: a weights variant's own folder, or an adapter
    merged into its parent weights and written to ``out`` with the tokenizer."""
    if source.kind == "weights":
        return Path(source.path)
    model = full_weights(source, parent_weights, trust_remote_code=trust_remote_code)
    return save_weights(model, out, tokenizer_folder(source, parent_weights),
                        trust_remote_code=trust_remote_code)
