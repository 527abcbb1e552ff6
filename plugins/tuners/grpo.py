"""GRPO (Shao et al. 2024, DeepSeekMath): group-relative policy optimisation with a LoRA adapter.

For every prompt the policy samples ``num_generations`` completions; a
registered reward (``job.rewards[reward]``) scores them, and each completion's
advantage is its reward minus its group's mean, divided by the group's
standard deviation. No value model and no reward model training: the group is
the baseline. trl's ``GRPOTrainer`` does the sampling and the clipped policy
loss (with its default ``loss_type = "dapo"`` token aggregation; ``"grpo"`` is
the paper's per-sequence mean); peft trains only the adapter, and with
``beta > 0`` the KL penalty's reference is the base itself (the adapter
switched off), so no second copy of the model is loaded.

Data: one JSONL of prompt rows, ``{"prompt": "..."}`` or ``{"prompt": [messages]}``
(preference rows work too; ``chosen``/``rejected`` are ignored).

The helpers :func:`make_reward`, :func:`message_text` and :func:`read_prompts`
are shared with the ``ppo`` tuner.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

import harness
from harness.components import TuneJob, TuneResult
from harness.data import read_jsonl
from harness.errors import DataError, UserError

from harness_plugins.tuners.rows import PromptRow
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

# -- shared with the ppo tuner ----------------------------------------------------------


def message_text(value: Any) -> str:
    """A prompt or completion as plain text, as rewards receive it.

    Text stays text; a list of chat messages becomes their contents joined by a
    blank line (roles and the chat template are dropped), so a one-turn prompt
    ``[{"role": "user", "content": "Hi"}]`` reaches the reward as ``"Hi"``.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return "\n\n".join(message_text(item) for item in value)


def make_reward(tuner: str, job: TuneJob, name: str, raw_options: dict[str, Any]) -> Any:
    """The registered reward ``name`` built with ``raw_options`` checked by its ``Options``.

    Raises :class:`UserError` naming the tuner option on an unknown name or a bad option.
    """
    reward_class = job.rewards.get(name)
    if reward_class is None:
        known = ", ".join(sorted(job.rewards)) or "none"
        raise UserError(f"{tuner} option 'reward': unknown reward {name!r}; known: {known}")
    try:
        options = reward_class.Options.model_validate(raw_options)
    except ValidationError as exc:
        raise UserError(*(
            f"{tuner} option 'reward_options'"
            + (f" field {'.'.join(str(p) for p in error['loc'])!r}" if error["loc"] else "")
            + f" (reward {name!r}): {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )) from None
    return reward_class(options)


def read_prompts(job: TuneJob, tokenizer: Any,
                 max_prompt_tokens: int) -> list[tuple[int, PromptRow, list[int]]]:
    """Prompt rows of ``job.data`` with their chat-template token ids (generation prompt added).

    A prompt longer than ``max_prompt_tokens`` is a :class:`DataError` naming its line.
    """
    rows = []
    for line, row in read_jsonl(job.data, PromptRow):
        ids = tokenizer.apply_chat_template(row.conversational()["prompt"],
                                            add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        if len(ids) > max_prompt_tokens:
            raise DataError(job.data, line, f"the prompt has {len(ids)} tokens; max_length minus "
                            f"max_completion_length leaves room for {max_prompt_tokens}",
                            field="prompt")
        rows.append((line, row, list(ids)))
    return rows


def write_log(job: TuneJob, payload: dict[str, Any]) -> None:
    """What the trainer logged (rewards per step and more), kept beside the adapter."""
    (job.output_dir / "rl_log.json").write_text(json.dumps(payload, indent=1, default=float),
                                                 encoding="utf-8")


# -- the tuner ----------------------------------------------------------------------------


class GRPOOptions(AdapterOptions):
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
                        description="KL penalty to the base (0: no reference pass)")
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
