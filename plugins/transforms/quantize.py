"""Quantise a variant's weights with bitsandbytes: 4-bit NF4/FP4 with double quantisation
(Dettmers et al. 2023, QLoRA) or 8-bit LLM.int8 (Dettmers et al. 2022).

The result is a weights folder whose config carries the quantisation, so every loader
(``harness.load_causal_lm`` included) reloads it as bitsandbytes layers.
"""

from __future__ import annotations

import shutil
from typing import Any, Literal

from pydantic import model_validator

import harness
from harness import TransformJob, TransformResult

from harness_plugins.transforms.weights import (
    refuse_quantized,
    save_weights,
    tokenizer_folder,
    write_full_weights,
)


class QuantizeOptions(harness.Options):
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True

    @model_validator(mode="after")
    def _four_bit_options_need_four_bits(self) -> QuantizeOptions:
        given = sorted({"quant_type", "double_quant"} & self.model_fields_set)
        if self.bits == 8 and given:
            raise ValueError(f"bits = 8 takes no 4-bit option; remove {' and '.join(given)}")
        return self


def quantization_config(options: QuantizeOptions, on_gpu: bool) -> Any:
    """transformers' ``BitsAndBytesConfig`` for the options; 4-bit computes in bfloat16 on a
    GPU that has it and in float32 otherwise, as the qlora tuner does."""
    import torch
    from transformers import BitsAndBytesConfig

    if options.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant, bnb_4bit_compute_dtype=compute,
    )


class QuantizeTransform(harness.Transform):
    Options = QuantizeOptions

    def apply(self, job: TransformJob) -> TransformResult:
        import torch
        from transformers import AutoModelForCausalLM

        source, trust = job.sources[0], job.model.trust_remote_code
        refuse_quantized(source, job.parent_weights, "quantize")
        on_gpu = torch.cuda.is_available()
        # bitsandbytes quantises as transformers loads a checkpoint, so an adapter is first
        # merged and written out; the copy lives in the job's folder and goes when done
        staging = job.output_dir / "full-weights.tmp"
        try:
            folder = write_full_weights(source, job.parent_weights, staging,
                                        trust_remote_code=trust)
            model = AutoModelForCausalLM.from_pretrained(
                folder, quantization_config=quantization_config(self.options, on_gpu),
                device_map={"": 0} if on_gpu else "cpu", use_safetensors=True,
                trust_remote_code=trust,
            )
            out = save_weights(model, job.output_dir / "weights",
                               tokenizer_folder(source, job.parent_weights),
                               trust_remote_code=trust)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return TransformResult("weights", out)


@harness.hookimpl
def harness_register_transforms(register):
    register("quantize", QuantizeTransform)
