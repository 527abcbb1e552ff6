"""LoRA (Hu et al. 2021): a low-rank adapter trained by trl's SFTTrainer through peft.

Loss on completions only; the adapter is saved as safetensors.
"""

from __future__ import annotations

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


class LoraOptions(FusedHeadAdapterOptions):
    pass


class LoraTuner(BaseTuner):
    Options = LoraOptions
    Rows = SFTRow

    def tune(self, job: TuneJob) -> TuneResult:
        return train_sft(job, self.options, load_model_for(job), lora_config(self.options))


@harness.hookimpl
def harness_register_tuners(register):
    register("lora", LoraTuner)
