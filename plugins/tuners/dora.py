"""DoRA (Liu et al. 2024): LoRA with the weight split into magnitude and direction.

peft's ``use_dora``; otherwise the LoRA recipe (SFT, loss on completions only).
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


class DoraOptions(FusedHeadAdapterOptions):
    pass


class DoraTuner(BaseTuner):
    Options = DoraOptions
    Rows = SFTRow

    def tune(self, job: TuneJob) -> TuneResult:
        return train_sft(job, self.options, load_model_for(job),
                         lora_config(self.options, use_dora=True))


@harness.hookimpl
def harness_register_tuners(register):
    register("dora", DoraTuner)
