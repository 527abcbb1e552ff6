"""WiSE-FT (Wortsman et al. 2022): weights part of the way from the parent to the variant,
``(1 - alpha) * parent + alpha * variant``, one output per alpha.

A plain LoRA adapter is interpolated without touching the weights: its delta
``scaling * B @ A`` is linear in B, so B times alpha is the interpolation, as an adapter.
Anything else (a full fine-tune, DoRA) is interpolated tensor by tensor and saved as weights.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

import harness
from harness import TransformJob, TransformResult, Variant

from harness_plugins.transforms.weights import (
    adapter_config,
    adapter_file,
    full_weights,
    load_weights,
    refuse_quantized,
    save_weights,
    tokenizer_folder,
)

#: the B factor of a LoRA layer in a saved adapter (a linear's or an embedding's)
_LORA_B = re.compile(r"\.lora_(embedding_)?B(\.|$)")


def alpha_label(alpha: float) -> str:
    """The compact label that ends the variant's name: 0.5 -> ``sft~interp0.5``."""
    return f"{alpha:g}"


class InterpolateOptions(harness.Options):
    alphas: list[float] = Field(
        min_length=1,
        description="how far to go from the parent (0) to the variant (1), one output each")

    @field_validator("alphas")
    @classmethod
    def _distinct_and_in_range(cls, alphas: list[float]) -> list[float]:
        outside = [a for a in alphas if not 0.0 <= a <= 1.0]  # NaN fails this too
        if outside:
            raise ValueError(f"every alpha must be in [0, 1]; got {outside}")
        labels = [alpha_label(a) for a in alphas]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"alphas must be distinct (as their labels, {{alpha:g}}); "
                             f"repeated: {', '.join(repeated)}")
        return alphas


def scales_linearly(config: dict[str, Any]) -> bool:
    """Whether scaling B by alpha scales everything the adapter changes by alpha: a LoRA
    whose only trained tensors are its A and B factors. Not DoRA (its magnitude vector
    renormalises the direction, so the change is not linear in B), nor an adapter that also
    trains whole modules, biases or token embeddings, or that replicates layers."""
    return (config.get("peft_type") == "LORA" and not config.get("use_dora")
            and not config.get("modules_to_save") and config.get("bias", "none") == "none"
            and not config.get("trainable_token_indices")
            and not config.get("layer_replication"))


def scaled_adapter(source: Variant, alpha: float, out: Path) -> Path:
    """A copy of the adapter with every B factor times alpha (written by hand: peft offers
    no way to rescale a saved adapter; safetensors reads and writes the tensors)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    shutil.copytree(source.path, out)
    path = out / adapter_file(source).name
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    for name, tensor in tensors.items():
        if _LORA_B.search(name):
            tensors[name] = tensor * alpha  # a Python float keeps the tensor's dtype
    save_file(tensors, path, metadata=metadata)
    return out


def interpolated_weights(job: TransformJob, alpha: float, out: Path) -> Path:
    """The variant's full weights moved towards the parent's: ``torch.lerp(parent, variant,
    alpha)`` per tensor, which is exact at alpha = 0 and 1 when the two share a dtype. The
    result keeps the variant's config, dtypes and tokenizer."""
    import torch

    source, trust = job.sources[0], job.model.trust_remote_code
    refuse_quantized(source, job.parent_weights, "interpolate")
    variant = full_weights(source, job.parent_weights, trust_remote_code=trust)
    parent = load_weights(job.parent_weights, trust_remote_code=trust).state_dict()
    target = variant.state_dict()
    mismatched = sorted(name for name in target.keys() | parent.keys()
                        if name not in target or name not in parent
                        or target[name].shape != parent[name].shape)
    if mismatched:
        raise ValueError(f"cannot interpolate {source.name!r} with the weights it was made "
                         f"from: their tensors differ ({', '.join(mismatched[:5])})")
    done: set[int] = set()
    with torch.no_grad():
        for name, tensor in target.items():
            # tied tensors (embeddings and head) share storage: move each once
            if not tensor.is_floating_point() or tensor.data_ptr() in done:
                continue
            done.add(tensor.data_ptr())
            tensor.copy_(torch.lerp(parent[name].to(tensor.dtype), tensor, alpha))
    return save_weights(variant, out, tokenizer_folder(source, job.parent_weights),
                        trust_remote_code=trust)


class InterpolateTransform(harness.Transform):
    Options = InterpolateOptions

    @classmethod
    def outputs(cls, options: InterpolateOptions) -> list[str]:
        return [alpha_label(a) for a in options.alphas]

    @classmethod
    def output_key(cls, options: InterpolateOptions, output: str) -> dict[str, float]:
        """One variant depends on its own alpha only: adding an alpha makes only its
        variant."""
        return {"alpha": {alpha_label(a): a for a in options.alphas}[output]}

    def apply(self, job: TransformJob) -> TransformResult:
        alpha = {alpha_label(a): a for a in self.options.alphas}[job.output]
        source = job.sources[0]
        if source.kind == "adapter" and scales_linearly(adapter_config(source)):
            return TransformResult("adapter", scaled_adapter(source, alpha,
                                                             job.output_dir / "adapter"))
        return TransformResult("weights", interpolated_weights(job, alpha,
                                                               job.output_dir / "weights"))


@harness.hookimpl
def harness_register_transforms(register):
    register("interpolate", InterpolateTransform)
