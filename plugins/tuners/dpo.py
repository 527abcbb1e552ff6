"""DPO (Rafailov et al. 2023): a LoRA adapter trained on preference pairs by trl's DPOTrainer.

The reference policy is the model the adapter is trained on (the base, or with
``from`` the parent variant's merged weights, which the harness passes as
``job.model``): the adapter is switched off for the reference forward pass, so no
second copy of the model is held.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

import harness
from harness import TuneJob, TuneResult

from harness_plugins.tuners.preferences import data_lines, prompt_fills_max_length
from harness_plugins.tuners.rows import PreferenceRow, load_rows
from harness_plugins.tuners.training import (
    BaseTuner,
    FusedHeadAdapterOptions,
    load_model_for,
    load_tokenizer_for,
    lora_config,
    record_callback,
    run_trainer,
    trainer_args,
)

#: every loss trl's DPOTrainer implements (``DPOConfig.loss_type``, the same 15 in 1.12 and
#: 1.16; the trainer's ``_compute_loss`` rejects anything else)
DPOLoss = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]


class DPOOptions(FusedHeadAdapterOptions):
    beta: float = Field(default=0.1, gt=0, description="how far the policy may move from the reference "
                                                        "(higher = closer); tau for 'ipo'")
    loss_type: DPOLoss | list[DPOLoss] = Field(
        default="sigmoid", description="a DPO loss, or a list of them added with equal weights")
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=0.5,
        description="flip probability for 'robust' and 'aot*', epsilon for 'exo_pair'")

    @model_validator(mode="after")
    def _check_loss(self) -> DPOOptions:
        losses = [self.loss_type] if isinstance(self.loss_type, str) else self.loss_type
        if not losses:
            raise ValueError("'loss_type' must name at least one loss")
        # trl raises this only when the trainer is built; say it when the suite is validated
        if "exo_pair" in losses and self.label_smoothing == 0:
            raise ValueError("'exo_pair' needs label_smoothing > 0 (the EXO paper suggests 1e-3)")
        return self


class DPOTuner(BaseTuner):
    Options = DPOOptions
    Rows = PreferenceRow

    def tune(self, job: TuneJob) -> TuneResult:
        dataset = load_rows(job.data, self.Rows)  # every row checked before trl is even imported
        lines = data_lines(job.data)
        from trl import DPOConfig, DPOTrainer

        options = self.options
        recorder = record_callback(job.on_step)
        args = trainer_args(DPOConfig, options, job, max_length=options.max_length, beta=options.beta,
                            loss_type=options.loss_type, label_smoothing=options.label_smoothing)
        # The reference model is the base with the adapter disabled, not a copy. In trl 1.16
        # DPOTrainer.__init__ wraps a plain model with get_peft_model when given peft_config and
        # sets self.ref_model = None when ref_model is None and the model is a peft model; the
        # reference forward in _compute_loss then runs under use_adapter(model, None), i.e.
        # model.disable_adapter(). (Passing an already wrapped PeftModel instead would make trl
        # add a second "ref" adapter as a copy; a plain model with no peft_config would make it
        # load a second full model.) Each row carries its line number, to name a row that trl drops;
        # the column never reaches a batch (it is not a DPO input, so the Trainer removes it).
        trainer = DPOTrainer(model=load_model_for(job), ref_model=None, args=args,
                             train_dataset=dataset.add_column("line", lines),
                             processing_class=load_tokenizer_for(job),
                             peft_config=lora_config(options), callbacks=[recorder])
        # trl drops, without a word, every row whose prompt alone fills max_length
        kept = set(trainer.train_dataset["line"])
        for line in lines:
            if line not in kept:
                raise prompt_fills_max_length(job, line, options.max_length)
        return run_trainer(trainer, job, "adapter", recorder)


@harness.hookimpl
def harness_register_tuners(register):
    register("dpo", DPOTuner)
