"""LoRA (Hu et al. 2021) through peft, trained with trl's SFTTrainer.

Loss on completions only; the adapter is saved as safetensors.
"""

from __future__ import annotations

import shutil
from typing import Any, Literal

from pydantic import Field

import harness
from harness.components import Options, TuneJob, TuneResult

from harness_plugins.tuners.sft_rows import load_sft_dataset
from harness_plugins.tuners.records import (
    PeakMemory,
    count_parameters,
    quiet_trainer,
    record_callback,
    training_record,
)


class SFTOptions(Options):
    """Options every supervised tuner shares."""

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


class LoraOptions(SFTOptions):
    r: int = Field(default=8, gt=0)
    alpha: float = Field(default=16, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


def sft_config(options: SFTOptions, job: TuneJob, **extra: Any):
    """A trl SFTConfig from our options: no checkpoints, no reporting, every step logged."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(job.output_dir / "trainer"),
        max_steps=options.steps or -1,
        num_train_epochs=options.epochs,
        learning_rate=options.lr,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.gradient_accumulation,
        max_length=options.max_length,
        warmup_steps=options.warmup,
        weight_decay=options.weight_decay,
        lr_scheduler_type=(
            "constant_with_warmup" if options.schedule == "constant" and options.warmup
            else options.schedule
        ),
        completion_only_loss=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=job.seed,
        data_seed=job.seed,
        include_num_input_tokens_seen=True,
        disable_tqdm=True,
        gradient_checkpointing=options.gradient_checkpointing,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        **extra,
    )


def train_sft(job: TuneJob, options: SFTOptions, model: Any, tokenizer: Any,
              peft_config: Any) -> TuneResult:
    """Train ``model`` (wrapped by trl in ``peft_config``) on the job's data and save the adapter."""
    from trl import SFTTrainer

    dataset = load_sft_dataset(job.data)
    recorder = record_callback(job.on_step)
    trainer = SFTTrainer(
        model=model, args=sft_config(options, job), train_dataset=dataset,
        processing_class=tokenizer, peft_config=peft_config, callbacks=[recorder],
    )
    quiet_trainer(trainer)
    trainable, total = count_parameters(trainer.model)
    with PeakMemory() as memory:
        state = trainer.train()
    adapter_dir = job.output_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    shutil.rmtree(job.output_dir / "trainer", ignore_errors=True)
    record = training_record(recorder, state.global_step, memory, trainer.model, trainable, total)
    return TuneResult("adapter", adapter_dir, record)


def load_for_training(job: TuneJob, **kwargs: Any) -> tuple[Any, Any]:
    from harness_plugins.backends.hf import load_tokenizer

    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(job.model.path, trust_remote_code=job.model.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        job.model.path, use_safetensors=True, trust_remote_code=job.model.trust_remote_code,
        **kwargs,
    )
    return model, tokenizer


class LoraTuner:
    Options = LoraOptions

    def __init__(self, options: LoraOptions) -> None:
        self.options = options

    def peft_config(self) -> Any:
        from peft import LoraConfig

        o = self.options
        return LoraConfig(
            r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout,
            target_modules=o.target_modules, task_type="CAUSAL_LM",
        )

    def tune(self, job: TuneJob) -> TuneResult:
        model, tokenizer = load_for_training(job)
        return train_sft(job, self.options, model, tokenizer, self.peft_config())


@harness.hookimpl
def harness_register_tuners(register):
    register("lora", LoraTuner)
