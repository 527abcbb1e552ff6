"""What the RL tuners (GRPO and PPO) share: the reward they optimise, their prompts, their log."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

import harness
from harness import DataError, TuneJob, UserError

from harness_plugins.tuners.rows import PromptRow


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


def reward_components(options: Any) -> list[harness.NestedComponent]:
    """The reward a tuner's ``reward`` and ``reward_options`` name, for ``harness validate``
    to check with the suite (none when ``reward`` is unset)."""
    if not options.reward:
        return []
    return [harness.NestedComponent("reward", options.reward, options.reward_options)]


def make_reward(tuner: str, job: TuneJob, name: str, raw_options: dict[str, Any]) -> Any:
    """The registered reward ``name`` built with ``raw_options`` checked by its ``Options``.

    Raises :class:`UserError` naming the tuner option on an unknown name or a bad option
    (``harness validate`` says the same earlier; a tuner run without a suite gets it here).
    """
    reward_class = job.rewards.get(name)
    if reward_class is None:
        known = ", ".join(sorted(job.rewards)) or "none"
        raise UserError(f"{tuner} option 'reward': unknown reward {name!r}; known: {known}")
    try:
        options = reward_class.Options.model_validate(raw_options)
    except ValidationError as exc:
        raise UserError(*(
            f"{tuner} option 'reward_options'" + (f" field {field!r}" if field else "")
            + f" (reward {name!r}): {message}"
            for field, message in harness.validation_problems(exc)
        )) from None
    return reward_class(options)


def read_prompts(job: TuneJob, tokenizer: Any,
                 max_prompt_tokens: int) -> list[tuple[int, PromptRow, list[int]]]:
    """Prompt rows of ``job.data`` with their chat-template token ids (generation prompt added).

    A prompt longer than ``max_prompt_tokens`` is a :class:`DataError` naming its line.
    """
    rows = []
    for line, row in harness.read_jsonl(job.data, PromptRow):
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
