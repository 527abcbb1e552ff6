"""GRPO (Shao et al. 2024, DeepSeekMath): group-relative policy optimisation with a LoRA adapter.

For every prompt the policy samples ``num_generations`` completions; a
registered reward (``job.rewards[reward]``) scores them, and each completion's
advantage is its reward minus its group's mean, divided by the group's
standard deviation. No value model and no reward model training: the group is
the baseline. trl's ``GRPOTrainer`` does the sampling and the clipped policy
loss (with its default ``loss_type = "dapo"`` token aggregation; ``"grpo"`` is
the paper's per-sequence mean); peft trains only the adapter, and with
``beta > 0`` the KL penalty's reference is the model it starts from (the adapter
switched off): the base, or with ``from`` the parent variant's merged weights,
so no second copy of the model is loaded.

Data: one JSONL of prompt rows, ``{"prompt": "..."}`` or ``{"prompt": [messages]}``
(preference rows work too; ``chosen``/``rejected`` are ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

import harness
from harness import TuneJob, TuneResult

from harness_plugins.tuners.rl import (
    make_reward,
    message_text,
    read_prompts,
    reward_components,
    write_log,
)
from harness_plugins.tuners.rows import PromptRow
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


class GRPOOptions(FusedHeadAdapterOptions):
    """``batch_size`` counts completions: ``batch_size / num_generations`` prompts per step."""

    reward: str = Field(default="length", description="name of a registered reward")
    reward_options: dict[str, Any] = Field(
        default_factory=dict, description="options of that reward, checked by its Options")
    num_generations: int = Field(default=4, ge=2,
                                 description="completions sampled per prompt (the group)")
    max_completion_length: int = Field(default=64, gt=0,
                                       description="most tokens generated per completion")
    temperature: float = Field(default=1.0, gt=0, description="sampling temperature")
    beta: float = Field(default=0.0, ge=0,
                        description="KL penalty to the starting model (0: no reference pass)")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field(
        default="dapo", description="trl's token aggregation of the clipped loss")

    @model_validator(mode="after")
    def _groups_fit(self) -> GRPOOptions:
        completions = self.batch_size * self.gradient_accumulation
        if completions % self.num_generations:
            raise ValueError(
                f"batch_size x gradient_accumulation ({completions}) "
                f"must be a multiple of num_generations ({self.num_generations})")
        if self.max_completion_length >= self.max_length:
            raise ValueError(f"max_completion_length ({self.max_completion_length}) must be less "
                             f"than max_length ({self.max_length})")
        return self


def trl_reward_function(reward: Any, name: str) -> Any:
    """A harness ``Reward`` in trl's reward-function form (texts, one float per completion)."""

    def reward_function(prompts: Sequence[Any], completions: Sequence[Any],
                        **_: Any) -> list[float]:
        scores = reward([message_text(p) for p in prompts], [message_text(c) for c in completions])
        return [float(s) for s in scores]

    reward_function.__name__ = name  # trl logs rewards/<name>/mean
    return reward_function


class GRPOTuner(BaseTuner):
    Options = GRPOOptions
    Rows = PromptRow

    @classmethod
    def nested_components(cls, options: GRPOOptions) -> list[harness.NestedComponent]:
        return reward_components(options)

    @classmethod
    def planned_steps(cls, options: GRPOOptions, rows: int) -> int | None:
        """``steps`` when set; by epochs, trl's generation batches make the count its own."""
        return options.steps

    def tune(self, job: TuneJob) -> TuneResult:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        options = self.options
        reward = make_reward("grpo", job, options.reward, options.reward_options)
        tokenizer = load_tokenizer_for(job)
        rows = read_prompts(job, tokenizer, options.max_length - options.max_completion_length)
        dataset = Dataset.from_list([row.conversational() for _, row, _ in rows])
        recorder = record_callback(job.on_step)
        args = trainer_args(
            GRPOConfig, options, job,
            num_generations=options.num_generations,
            max_completion_length=options.max_completion_length,
            temperature=options.temperature,
            beta=options.beta,
            loss_type=options.loss_type,
            log_completions=False,
        )
        trainer = GRPOTrainer(model=load_model_for(job),
                              reward_funcs=trl_reward_function(reward, options.reward),
                              args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=lora_config(options), callbacks=[recorder])
        result = run_trainer(trainer, job, "adapter", recorder)
        write_log(job, {"method": "grpo", "reward": options.reward,
                        "steps": [h for h in trainer.state.log_history if "loss" in h]})
        return result


@harness.hookimpl
def harness_register_tuners(register):
    register("grpo", GRPOTuner)
