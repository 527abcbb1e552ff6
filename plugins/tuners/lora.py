"""LoRA (Hu et al. 2021): a low-rank adapter trained by trl's SFTTrainer through peft.

Loss on completions only; the adapter is saved as safetensors.
"""

from __future__ import annotations

from typing import Any

import harness
from harness.components import TuneJob, TuneResult

from harness_plugins.tuners.rows import SFTRow, load_rows
from harness_plugins.tuners.training import (
    AdapterOptions,
    BaseTuner,
    load_model_for,
    load_tokenizer_for,
    lora_config,
    record_callback,
    run_trainer,
    trainer_args,
)


class LoraOptions(AdapterOptions):
    pass


def train_sft(job: TuneJob, options: Any, model: Any, peft_config: Any | None,
              save: str = "adapter") -> TuneResult:
    """Supervised fine-tuning with trl's SFTTrainer; shared by LoRA, DoRA, QLoRA and full."""
    from trl import SFTConfig, SFTTrainer

    dataset = load_rows(job.data, SFTRow)
    recorder = record_callback(job.on_step)
    args = trainer_args(SFTConfig, options, job, max_length=options.max_length,
                        completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=load_tokenizer_for(job), peft_config=peft_config,
                         callbacks=[recorder])
    return run_trainer(trainer, job, save, recorder)


class LoraTuner(BaseTuner):
    Options = LoraOptions
    Rows = SFTRow

    def tune(self, job: TuneJob) -> TuneResult:
        return train_sft(job, self.options, load_model_for(job), lora_config(self.options))


@harness.hookimpl
def harness_register_tuners(register):
    register("lora", LoraTuner)
