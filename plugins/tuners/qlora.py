"""QLoRA (Dettmers et al. 2023): LoRA on a base frozen in 4-bit NF4 with double quantisation.

bitsandbytes quantises the base's linear layers as it loads (on CPU too, from
bitsandbytes 0.50); peft's ``prepare_model_for_kbit_training`` readies it for
training. Only the adapter is saved. The harness evaluates that adapter on the
full-precision base, as it does every adapter of that base (docs/tuners/qlora.md).
"""

from __future__ import annotations

from typing import Literal

import harness
from harness import TuneJob, TuneResult

from harness_plugins.tuners.rows import SFTRow
from harness_plugins.tuners.training import (
    BaseTuner,
    FusedHeadAdapterOptions,
    load_model_for,
    lora_config,
    train_sft,
)


class QLoraOptions(FusedHeadAdapterOptions):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


def quantised_base(job: TuneJob, options: QLoraOptions):
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    on_gpu = torch.cuda.is_available()
    compute = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    quantisation = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant, bnb_4bit_compute_dtype=compute,
    )
    model = load_model_for(job, quantization_config=quantisation,
                           device_map={"": 0} if on_gpu else "cpu")
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=options.gradient_checkpointing
    )


class QLoraTuner(BaseTuner):
    Options = QLoraOptions
    Rows = SFTRow

    def tune(self, job: TuneJob) -> TuneResult:
        return train_sft(job, self.options, quantised_base(job, self.options),
                         lora_config(self.options))


@harness.hookimpl
def harness_register_tuners(register):
    register("qlora", QLoraTuner)
