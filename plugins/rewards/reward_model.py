"""``reward-model``: a sequence-classification reward model scores prompt + completion.

The folder (option ``path``) holds a transformers model with one output label
(``AutoModelForSequenceClassification``, ``num_labels=1``), its config and
tokenizer, in safetensors: for example the ``reward_model`` folder the ``ppo``
tuner keeps with ``keep_reward_model = true``, or any reward model trained
with trl's ``RewardTrainer``.

Each pair is rendered the way ``RewardTrainer`` renders its training pairs:
through the tokenizer's chat template as ``[{"role": "user", "content":
prompt}, {"role": "assistant", "content": completion}]``, or, without a chat
template (or with ``chat_template = false``), as ``prompt + completion``
followed by the EOS token. The reward is the model's raw output (logit) at
the last non-padding token; its scale is whatever the model learned
(Bradley-Terry logits: only differences mean something).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

import harness
from harness import UserError


class RewardModelOptions(harness.Options):
    path: Path = Field(description="folder of the reward model (absolute, or relative to the "
                                   "working directory)")
    batch_size: int = Field(default=8, gt=0, description="pairs scored per forward pass")
    max_length: int = Field(default=1024, gt=8,
                            description="longest input in tokens; longer ones keep their end")
    chat_template: bool = Field(default=True,
                                description="render pairs with the tokenizer's chat template")
    device: str = Field(default="auto",
                        description='"auto" (CUDA if present), "cpu", "cuda:0", ...')


class RewardModelReward(harness.Reward):
    """Scores with a reward model loaded on first use (not when the suite is checked)."""

    Options = RewardModelOptions

    def __init__(self, options: RewardModelOptions) -> None:
        self.options = options
        self.model: Any = None
        self.tokenizer: Any = None

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any,
                    options: RewardModelOptions) -> RewardModelReward:
        """Wrap a reward model already in memory (the ppo tuner's freshly trained one)."""
        reward = cls(options)
        reward.model, reward.tokenizer = model.eval(), tokenizer
        return reward

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = self.options.path
        if not (path / "config.json").is_file():
            raise UserError(f"reward 'reward-model': {str(path)!r} is not a model folder "
                            "(no config.json)")
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
        if model.config.num_labels != 1:
            raise UserError(f"reward 'reward-model': {str(path)!r} has num_labels="
                            f"{model.config.num_labels}; a reward model has one output")
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Sequence-classification heads read the last token that is not padding.
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.to(harness.pick_device(self.options.device)).eval()
        self.tokenizer = tokenizer

    def texts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[str]:
        tok = self.tokenizer
        if self.options.chat_template and getattr(tok, "chat_template", None):
            return [
                tok.apply_chat_template([{"role": "user", "content": p},
                                         {"role": "assistant", "content": c}], tokenize=False)
                for p, c in zip(prompts, completions, strict=True)
            ]
        return [p + c + (tok.eos_token or "") for p, c in zip(prompts, completions, strict=True)]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        import torch

        if self.model is None:
            self._load()
        tok, device = self.tokenizer, self.model.device
        texts = self.texts(prompts, completions)
        previous = tok.padding_side, tok.truncation_side
        tok.padding_side, tok.truncation_side = "right", "left"
        scores: list[float] = []
        try:
            for start in range(0, len(texts), self.options.batch_size):
                batch = tok(texts[start : start + self.options.batch_size], return_tensors="pt",
                            padding=True, truncation=True, max_length=self.options.max_length,
                            add_special_tokens=False)
                with torch.inference_mode():
                    logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits
                scores.extend(logits[:, 0].float().cpu().tolist())
        finally:
            tok.padding_side, tok.truncation_side = previous
        return scores


@harness.hookimpl
def harness_register_rewards(register):
    register("reward-model", RewardModelReward)
