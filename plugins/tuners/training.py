"""What every tuner shares: options, trl trainer arguments, model loading, the run itself.

A tuner module only says what differs: its options, its trl trainer and its
peft configuration (the four SFT tuners share their trainer too: :func:`train_sft`).
The training loop is trl's; this module adds the bookkeeping every variant needs
(loss curve, tokens, seconds, peak memory, parameter counts) and saves the result
as safetensors.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

import harness
from harness import DataError, Options, TuneJob, TuneResult

from harness_plugins.tuners.preferences import data_lines
from harness_plugins.tuners.records import (
    PeakMemory,
    count_parameters,
    quiet_trainer,
    record_callback,  # re-exported: every tuner takes its training tools from this module
    training_record,
)
from harness_plugins.tuners.rows import SFTRow, load_rows


class TrainingOptions(Options):
    """Options of every tuner's optimisation loop."""

    steps: int | None = Field(default=None, gt=0, description="optimiser steps (wins over epochs)")
    epochs: float = Field(default=1.0, gt=0)
    lr: float = Field(default=2e-4, gt=0)
    batch_size: int = Field(default=4, gt=0)
    gradient_accumulation: int = Field(default=1, gt=0)
    max_length: int = Field(default=512, gt=8)
    warmup: float = Field(default=0.0, ge=0, description="warm-up steps, or a fraction of all steps if < 1")
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    weight_decay: float = Field(default=0.0, ge=0)
    gradient_checkpointing: bool = Field(default=False, description="trade compute for memory")
    checkpoint_every: int | None = Field(
        default=None, gt=0,
        description="save a resumable checkpoint every N steps; a killed run resumes from the last")


class AdapterOptions(TrainingOptions):
    """Options of the low-rank adapter that LoRA-style tuners train."""

    r: int = Field(default=8, gt=0)
    alpha: float = Field(default=16, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class FusedHeadAdapterOptions(AdapterOptions):
    """Adapter options of a tuner whose trl trainer (SFT, DPO, GRPO) refuses an adapter on
    the output layer: from trl 1.16 these trainers score tokens with trl's fused LM head,
    which multiplies the hidden states by ``lm_head.weight`` itself, so a LoRA on ``lm_head``
    would never train, and their ``__init__`` raises once the model is loaded. These options
    say so when the suite is validated.
    """

    @field_validator("target_modules")
    @classmethod
    def _not_the_output_layer(cls, value: list[str] | str) -> list[str] | str:
        if "lm_head" in ([value] if isinstance(value, str) else value):
            raise ValueError(
                "'lm_head' cannot carry the adapter: trl computes this tuner's log-probabilities "
                "from lm_head's weight directly, so an adapter there would never train; leave it "
                "out (\"all-linear\" already does)")
        return value


class BaseTuner(harness.Tuner):
    """A built-in tuner: :class:`harness.Tuner` whose options default to
    :class:`TrainingOptions`. A subclass sets ``Options`` and ``Rows`` (the row schema of
    its data, read in full when the suite is validated) and writes ``tune(job)``.
    """

    Options: ClassVar[type[TrainingOptions]] = TrainingOptions

    @classmethod
    def planned_steps(cls, options: TrainingOptions, rows: int) -> int | None:
        """The optimiser steps of transformers' Trainer on one device: ``steps`` when set,
        else epochs x updates per epoch, an update being ``gradient_accumulation`` batches
        of ``batch_size`` rows (the last batch may be short)."""
        if options.steps:
            return options.steps
        batches = math.ceil(rows / options.batch_size)
        per_epoch = max(math.ceil(batches / options.gradient_accumulation), 1)
        return math.ceil(options.epochs * per_epoch)


def lora_config(options: AdapterOptions, **extra: Any) -> Any:
    """A peft ``LoraConfig`` from adapter options (``use_dora=True`` for DoRA)."""
    from peft import LoraConfig

    return LoraConfig(
        r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
        target_modules=options.target_modules, task_type="CAUSAL_LM", **extra,
    )


def trainer_args(config_class: Any, options: TrainingOptions, job: TuneJob, **extra: Any) -> Any:
    """A trl config (SFTConfig, DPOConfig, ...): no checkpoints, no reporting, every step logged."""
    import torch

    on_gpu = torch.cuda.is_available()
    return config_class(
        output_dir=str(job.output_dir / "trainer"),
        max_steps=options.steps or -1,
        num_train_epochs=options.epochs,
        learning_rate=options.lr,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.gradient_accumulation,
        warmup_steps=options.warmup,
        lr_scheduler_type=(
            "constant_with_warmup" if options.schedule == "constant" and options.warmup
            else options.schedule
        ),
        weight_decay=options.weight_decay,
        gradient_checkpointing=options.gradient_checkpointing,
        logging_steps=1,
        # a checkpoint holds the optimiser, scheduler and RNG states too, so that a run
        # killed midway resumes where it was (transformers' own resume_from_checkpoint)
        save_strategy="steps" if options.checkpoint_every else "no",
        save_steps=options.checkpoint_every or 500,
        save_total_limit=1,
        report_to="none",
        seed=job.seed,
        data_seed=job.seed,
        include_num_input_tokens_seen=True,
        disable_tqdm=True,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
        **extra,
    )


def load_tokenizer_for(job: TuneJob) -> Any:
    return harness.load_tokenizer(job.model.path, trust_remote_code=job.model.trust_remote_code)


def load_model_for(job: TuneJob, **kwargs: Any) -> Any:
    """The base model to train, from safetensors only."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        job.model.path, use_safetensors=True, trust_remote_code=job.model.trust_remote_code,
        **kwargs,
    )


def checkpoint_callback(job: TuneJob, save: Literal["adapter", "weights"]) -> Any:
    """A trainer callback that saves the model every ``job.save_every`` optimiser steps
    (after the step, before the last one) to ``checkpoints/step<k>/<save>``, as the final
    state is saved: the adapter alone, or the weights with the tokenizer."""
    from transformers import TrainerCallback

    class KeepCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, processing_class=None, **kw):
            step = state.global_step
            if step % job.save_every == 0 and step < state.max_steps:
                out = checkpoint_folder(job, step) / save
                model.save_pretrained(out, safe_serialization=True)
                if save == "weights":
                    processing_class.save_pretrained(out)

    return KeepCheckpoints()


def checkpoint_folder(job: TuneJob, step: int) -> Path:
    return job.output_dir / "checkpoints" / f"step{step}"


def kept_checkpoints(job: TuneJob, save: str, steps: int) -> dict[int, Path]:
    """The checkpoints ``checkpoint_callback`` saved (a resumed run's earlier ones too)."""
    if not job.save_every:
        return {}
    kept = {k: checkpoint_folder(job, k) / save for k in range(job.save_every, steps, job.save_every)}
    return {k: path for k, path in kept.items() if path.is_dir()}


def run_trainer(trainer: Any, job: TuneJob, save: Literal["adapter", "weights"],
                recorder: Any) -> TuneResult:
    """Train, record what it cost, and save the adapter or the full weights as safetensors
    (and every ``job.save_every`` steps, the state then: ``TuneResult.checkpoints``)."""
    from transformers.trainer_utils import get_last_checkpoint

    quiet_trainer(trainer)
    if job.save_every:
        trainer.add_callback(checkpoint_callback(job, save))
    trainable, total = count_parameters(trainer.model)
    checkpoints = job.output_dir / "trainer"
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    with PeakMemory() as memory:
        state = trainer.train(resume_from_checkpoint=resume)
    out = job.output_dir / save
    trainer.model.save_pretrained(out, safe_serialization=True)
    if save == "weights":
        trainer.processing_class.save_pretrained(out)
    shutil.rmtree(job.output_dir / "trainer", ignore_errors=True)
    record = training_record(recorder, state.global_step, memory, trainer.model, trainable, total)
    return TuneResult(save, out, record, kept_checkpoints(job, save, state.global_step))


def completion_sft_trainer() -> type:
    """trl's ``SFTTrainer`` whose training loss projects to the vocabulary only at the
    positions it is taken on, once, and skips trl's per-step entropy and token accuracy.

    Why override trl: trl 1.16's ``SFTTrainer.compute_loss`` runs the model through trl's
    fused LM head (``trl.trainer.utils.add_fused_lm_head``), which scores the tokens tile by
    tile from ``lm_head.weight`` without building the logits. It projects only the labelled
    positions on a CUDA or XPU device with Triton, but every position elsewhere (the CPU);
    its backward pass projects them again; and on every step it computes the entropy and
    top-1 accuracy of the scored tokens for its logs (the harness records neither). trl has
    no setting that skips any of this. Here the model itself is asked for logits only at
    sequence positions where some row's next token is a completion token (transformers'
    ``logits_to_keep``, with the matching pre-shifted ``shift_labels``), and computes its
    own loss on them: the loss trl's ``loss_type="nll"`` takes, over the same tokens,
    normalised as trl normalises it (``num_items_in_batch``), on about a third of the rows
    for chat-formatted data. On the CPU a LoRA step of SmolLM2-135M takes about a quarter
    less CPU time than stock trl's (``bench/tuning_overhead.py``, one thread). The gradients
    agree with stock trl's to float32 rounding, not bit for bit: trl sums the
    log-probabilities in another order (``tests/test_tuning_speed_parity.py``). Anything
    else (evaluation, a model whose forward takes no ``logits_to_keep``, pre-shifted inputs)
    is trl's own ``compute_loss``.
    """
    import inspect

    from transformers import Trainer
    from trl import SFTTrainer

    class CompletionSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            model = getattr(self.model, "get_base_model", lambda: self.model)()
            self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
            self.flops_per_token: int | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = inputs["labels"][:, 1:] if "labels" in inputs else None
            if (not model.training or not self.keeps_logits or "shift_labels" in inputs
                    or targets is None):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            keep = (targets != -100).any(dim=0).nonzero().squeeze(1)
            if keep.numel() == 0:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs = {**inputs, "use_cache": False, "logits_to_keep": keep,
                      "shift_labels": targets[:, keep]}
            if getattr(self, "aux_loss_enabled", False):  # MoE: the router loss, as trl adds it
                inputs["output_router_logits"] = True
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        def floating_point_ops(self, inputs):
            # transformers walks every parameter to count them again each step (27 ms a step
            # for SmolLM2-135M with LoRA on a shared 2-core CPU); the count does not change
            if "input_ids" not in inputs:
                return super().floating_point_ops(inputs)
            if self.flops_per_token is None:
                self.flops_per_token = (super().floating_point_ops(inputs)
                                        // max(inputs["input_ids"].numel(), 1))
            return self.flops_per_token * inputs["input_ids"].numel()

    return CompletionSFTTrainer


def train_sft(job: TuneJob, options: Any, model: Any, peft_config: Any | None,
              save: Literal["adapter", "weights"] = "adapter") -> TuneResult:
    """Supervised fine-tuning with trl's SFTTrainer; shared by LoRA, DoRA, QLoRA and full."""
    from trl import SFTConfig

    dataset = load_rows(job.data, SFTRow)
    recorder = record_callback(job.on_step)
    # "nll" (trl's default): the loss completion_sft_trainer computes, named so that trl's own
    # compute_loss, where the override hands over to it, takes the same one
    args = trainer_args(SFTConfig, options, job, max_length=options.max_length,
                        completion_only_loss=True, loss_type="nll")
    trainer = completion_sft_trainer()(
        model=model, args=args, train_dataset=dataset, processing_class=load_tokenizer_for(job),
        peft_config=peft_config, callbacks=[recorder])
    if len(trainer.train_dataset) == 0:
        # trl drops, without a word, each row whose prompt alone fills max_length; with none
        # left, the Trainer's sampler would fail with "num_samples=0"
        raise DataError(job.data, data_lines(job.data)[0],
                        f"every row's prompt fills max_length = {options.max_length} tokens and "
                        "leaves none for the completion; raise the tuner's option 'max_length' "
                        "or shorten the prompts", field="prompt")
    return run_trainer(trainer, job, save, recorder)
