"""Full fine-tuning: every weight trains; the result is a weights folder, not an adapter.

The same SFT recipe as LoRA (trl's SFTTrainer, loss on completions only). The
backend evaluates the variant by loading that folder beside the base.
"""

from __future__ import annotations

from pydantic import Field

import harness
from harness import TuneJob, TuneResult

from harness_plugins.tuners.rows import SFTRow
from harness_plugins.tuners.training import BaseTuner, TrainingOptions, load_model_for, train_sft


class FullOptions(TrainingOptions):
    lr: float = Field(default=1e-5, gt=0)


class FullTuner(BaseTuner):
    Options = FullOptions
    Rows = SFTRow

    def tune(self, job: TuneJob) -> TuneResult:
        return train_sft(job, self.options, load_model_for(job), peft_config=None,
                         save="weights")


@harness.hookimpl
def harness_register_tuners(register):
    register("full", FullTuner)
