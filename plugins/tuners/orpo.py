"""ORPO (Hong et al. 2024): a LoRA adapter trained on preference pairs by trl's ORPOTrainer.

One loss, no reference model: the negative log-likelihood of the chosen answer
plus beta (the paper's lambda) times a log odds-ratio term that favours chosen
over rejected.
"""

from __future__ import annotations

import warnings

from pydantic import Field

import harness
from harness import TuneJob, TuneResult

from harness_plugins.tuners.preferences import data_lines, prompt_fills_max_length
from harness_plugins.tuners.rows import PreferenceRow, load_rows
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


class ORPOOptions(AdapterOptions):
    beta: float = Field(default=0.1, gt=0,
                        description="weight of the odds-ratio term (the paper's lambda; trl's default)")


class ORPOTuner(BaseTuner):
    Options = ORPOOptions
    Rows = PreferenceRow

    def tune(self, job: TuneJob) -> TuneResult:
        dataset = load_rows(job.data, self.Rows)  # every row checked before trl is even imported
        # trl (1.16 too) ships ORPO only under trl.experimental, whose first import warns that
        # the API is unstable: a notice for whoever writes the import, which a suite's author
        # cannot act on; silence it here only.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"You are importing from 'trl\.experimental'")
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        options = self.options
        recorder = record_callback(job.on_step)
        # remove_unused_columns=False: ORPO's collator needs the raw columns (trl would set it
        # itself, with a warning)
        args = trainer_args(ORPOConfig, options, job, max_length=options.max_length, beta=options.beta,
                            remove_unused_columns=False)
        trainer = _with_token_count(ORPOTrainer)(
            model=load_model_for(job), args=args, train_dataset=dataset,
            processing_class=load_tokenizer_for(job), peft_config=lora_config(options),
            callbacks=[recorder])
        _check_answers_fit(trainer.train_dataset, job, options.max_length)
        return run_trainer(trainer, job, "adapter", recorder)


def _with_token_count(trainer_class):
    """trl's ORPOTrainer, counting its tokens.

    Its batches hold ``chosen_input_ids`` and ``rejected_input_ids`` but no ``input_ids``,
    so transformers' counter warns on every step and counts nothing. Both halves are
    counted, padding included, as the counter does for DPO's concatenated batch.
    (trl 1.16 truncates as the harness needs: each answer keeps what fits after the prompt,
    so a sequence exceeds ``max_length`` only when its prompt alone does, and such a row is
    refused before training: ``_check_answers_fit``.)
    """
    import torch

    class HarnessORPOTrainer(trainer_class):
        def _track_num_input_tokens(self, inputs):
            if self.args.include_num_input_tokens_seen == "no":
                return
            tokens = sum(inputs[key].numel() for key in ("chosen_input_ids", "rejected_input_ids"))
            tokens = torch.as_tensor(tokens, device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += self.accelerator.gather(tokens).sum().item()

    return HarnessORPOTrainer


def _check_answers_fit(dataset, job: TuneJob, max_length: int) -> None:
    """A row whose prompt leaves no room for an answer token cannot be trained on; say which."""
    lines = data_lines(job.data)
    for index, row in enumerate(dataset):
        for side in ("chosen", "rejected"):
            if all(label == -100 for label in row[f"{side}_labels"]):
                raise prompt_fills_max_length(job, lines[index], max_length)


@harness.hookimpl
def harness_register_tuners(register):
    register("orpo", ORPOTuner)
