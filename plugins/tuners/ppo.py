"""PPO, the classic RLHF pipeline (Ouyang et al. 2022; Schulman et al. 2017), LoRA policy.

1. **Reward.** Without the ``reward`` option, a reward model is trained first:
   a copy of the base with a one-output sequence-classification head
   (``AutoModelForSequenceClassification``, ``num_labels=1``), trained by trl's
   ``RewardTrainer`` on the preference rows (Bradley-Terry loss) with a LoRA
   adapter of the tuner's ``r``/``alpha``/``dropout``/``target_modules`` and a
   fully trained head, then merged. With ``reward = "<name>"`` a registered
   reward (``length``, ``contains``, ``reward-model``, a plugin's) is used
   instead and nothing is trained for it.
2. **PPO.** trl's ``trl.experimental.ppo.PPOTrainer`` samples completions of
   the prompt set, scores each with the reward, subtracts ``kl_coef`` times the
   per-token KL to the reference (the starting model, the adapter switched off:
   the base, or with ``from`` the parent's weights), estimates advantages with
   GAE from a value model (another copy of the starting model with a
   one-output head, trained in full at ``value_lr``), and takes
   ``num_ppo_epochs`` passes of the clipped surrogate objective plus the
   clipped value loss.

Data: one JSONL. Without ``reward`` its rows are preference rows
(``prompt``/``chosen``/``rejected``): the reward model trains on the pairs and
their distinct prompts are PPO's prompt set. With ``reward`` the rows need only
``prompt`` (text or messages); other keys are ignored.

Library or own code: PPO is trl's; nothing of the algorithm is written here.
trl's PPOTrainer runs with a peft policy on CPU, but it cannot take a
registered reward *function*: it reads rewards from a module with a
``base_model_prefix`` backbone and a ``score`` head over token ids. This module
therefore writes only that adapter (:func:`text_reward_module`): a module that
decodes each rollout into prompt text and completion text, calls the reward,
and hands the score back in the shape trl reads. The trained reward model goes
through the same adapter, wrapped by the ``reward-model`` reward, so that it is
scored on exactly the text layout it was trained on (trl's native path reads
the score at the EOS token of the raw rollout, a position a chat-template
reward model never saw in training). The rest is configuration around
trl: PPO needs a padding token distinct from EOS (trl masks every pad id, so
with SmolLM2's ``pad = eos = <|im_end|>`` it would mask the prompt's own turn
ends and the policy's EOS), so the tuner pads with another special token that
no prompt contains (SmolLM2: ``<|endoftext|>``); the optimiser is built here
with two parameter groups, because trl's single learning rate would train a
LoRA adapter and a fully trained value model at the same rate; and the
adapter is saved from the policy alone (trl's ``trainer.model`` wraps policy
and value model together), so the shared ``run_trainer`` is not used.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

import harness
from harness import DataError, TuneJob, TuneResult, UserError, read_jsonl

from harness_plugins.tuners.records import (
    PeakMemory,
    count_parameters,
    quiet_trainer,
    record_callback,
    training_record,
)
from harness_plugins.tuners.rl import (
    make_reward,
    message_text,
    read_prompts,
    reward_components,
    write_log,
)
from harness_plugins.tuners.rows import PreferenceRow, PromptRow, load_rows
from harness_plugins.tuners.training import (
    AdapterOptions,
    BaseTuner,
    load_model_for,
    load_tokenizer_for,
    lora_config,
    trainer_args,
)


class PPOOptions(AdapterOptions):
    """``steps`` counts PPO updates: each samples ``batch_size x gradient_accumulation``
    completions and takes ``num_ppo_epochs x num_mini_batches`` optimiser steps on them
    (micro-batches of ``batch_size``)."""

    reward: str | None = Field(
        default=None, description="a registered reward; unset: train a reward model on the pairs")
    reward_options: dict[str, Any] = Field(
        default_factory=dict, description="options of that reward, checked by its Options")
    reward_model_steps: int | None = Field(
        default=None, gt=0, description="reward-model optimiser steps (wins over epochs)")
    reward_model_epochs: float = Field(default=1.0, gt=0)
    reward_model_lr: float = Field(default=2e-4, gt=0)
    keep_reward_model: bool = Field(
        default=False, description="save the trained reward model as reward_model/")
    max_completion_length: int = Field(
        default=64, gt=0, description="most tokens generated per completion")
    temperature: float = Field(default=0.7, gt=0, description="rollout sampling temperature")
    value_lr: float = Field(
        default=1e-5, gt=0, description="learning rate of the value model (trained in full)")
    kl_coef: float = Field(
        default=0.05, ge=0, description="weight of the per-token KL penalty to the base")
    cliprange: float = Field(default=0.2, gt=0, description="PPO ratio clip")
    vf_coef: float = Field(default=0.1, ge=0, description="weight of the value loss")
    cliprange_value: float = Field(default=0.2, gt=0, description="value clip")
    gamma: float = Field(default=1.0, ge=0, le=1, description="discount")
    lam: float = Field(default=0.95, ge=0, le=1, description="GAE lambda")
    num_ppo_epochs: int = Field(default=4, gt=0, description="passes over each batch of rollouts")
    num_mini_batches: int = Field(default=1, gt=0, description="mini-batches per pass")
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = Field(
        default=None, gt=0, description="subtracted from the score of a rollout without EOS")

    @model_validator(mode="after")
    def _no_checkpoints(self) -> PPOOptions:
        if self.checkpoint_every is not None:
            raise ValueError("checkpoint_every: ppo runs trl's own PPO loop, which cannot resume "
                             "from a checkpoint; leave it unset")
        return self

    @model_validator(mode="after")
    def _batches_fit(self) -> PPOOptions:
        rollouts = self.batch_size * self.gradient_accumulation
        if rollouts % self.num_mini_batches:
            raise ValueError(f"batch_size x gradient_accumulation ({rollouts}) must be a multiple "
                             f"of num_mini_batches ({self.num_mini_batches})")
        if self.whiten_rewards and rollouts // self.num_mini_batches < 8:
            raise ValueError("whiten_rewards needs at least 8 rollouts per mini-batch")
        if self.max_completion_length >= self.max_length:
            raise ValueError(f"max_completion_length ({self.max_completion_length}) must be less "
                             f"than max_length ({self.max_length})")
        if self.reward is None and self.reward_options:
            raise ValueError("reward_options needs reward (a registered reward's name)")
        return self


# -- the reward as trl reads it ---------------------------------------------------------------


def text_reward_module(reward: Any, tokenizer: Any, prompts: dict[tuple[int, ...], str]) -> Any:
    """A module trl's PPO can call as its reward model, scoring rollouts with a text ``reward``.

    trl calls ``getattr(m, m.base_model_prefix)(input_ids=..., attention_mask=...)`` on
    left-padded ``prompt + completion`` rows and reads ``m.score(hidden_states[-1])`` at each
    row's last completion token. The backbone splits each row into its prompt (found among
    ``prompts``, the token ids of the prompt set) and its completion (up to the first pad),
    scores the texts, and returns the score at every position. It also counts the tokens.
    """
    import torch

    lengths = sorted({len(ids) for ids in prompts}, reverse=True)

    class Backbone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = 0

        def forward(self, input_ids: Any, attention_mask: Any, **_: Any) -> Any:
            prompt_texts, completions = [], []
            for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
                start = mask.index(True) if True in mask else len(mask)
                row = ids[start:]
                n = next((n for n in lengths if tuple(row[:n]) in prompts), None)
                if n is None:
                    raise RuntimeError("ppo: a rollout does not start with a known prompt")
                rest = mask[start + n:]
                end = rest.index(False) if False in rest else len(rest)
                self.tokens += n + end
                prompt_texts.append(prompts[tuple(row[:n])])
                completions.append(tokenizer.decode(row[n:n + end], skip_special_tokens=True))
            scores = torch.tensor([float(s) for s in reward(prompt_texts, completions)],
                                  dtype=torch.float32, device=input_ids.device)
            return _Hidden((scores[:, None, None].expand(-1, input_ids.shape[1], 1),))

    class TextReward(torch.nn.Module):
        base_model_prefix = "backbone"

        def __init__(self) -> None:
            super().__init__()
            self.backbone = Backbone()
            self.score = torch.nn.Identity()

    return TextReward()


class _Hidden:
    def __init__(self, hidden_states: tuple[Any, ...]) -> None:
        self.hidden_states = hidden_states


def ppo_callback(on_step: Any, vf_coef: float) -> Any:
    """Keeps PPO's loss (policy + vf_coef x value loss, mean over the update) and metrics."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.history: list[dict[str, Any]] = []
            self.tokens = 0
            self.seconds = 0.0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss/policy_avg" in logs:
                loss = float(logs["loss/policy_avg"]) + vf_coef * float(logs["loss/value_avg"])
                self.losses.append(loss)
                self.history.append({"step": state.global_step, "loss": loss, **logs})
                on_step(state.global_step, state.max_steps, loss)

    return Recorder()


# -- tokenizer and reward model ------------------------------------------------------------------


def pick_pad_token(tokenizer: Any, prompt_ids: list[list[int]]) -> None:
    """Make the pad token a special token other than EOS that no prompt contains."""
    used = {token for ids in prompt_ids for token in ids}
    eos = tokenizer.eos_token_id
    current = tokenizer.pad_token_id
    if current is not None and current != eos and current not in used:
        return
    candidates = [tokenizer.unk_token, *tokenizer.all_special_tokens]
    for token in candidates:
        if token is None:
            continue
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and token_id != eos and token_id not in used:
            tokenizer.pad_token = token
            return
    raise UserError(
        "ppo: the tokenizer has no padding token apart from EOS and the tokens the prompts use; "
        "trl's PPO masks every pad id, so it needs one (add a pad token to the model's tokenizer)"
    )


def train_reward_model(job: TuneJob, options: PPOOptions, tokenizer: Any) -> tuple[Any, Any]:
    """LoRA + a fully trained one-output head on the preference rows, merged into the copy."""
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    dataset = load_rows(job.data, PreferenceRow)
    model = AutoModelForSequenceClassification.from_pretrained(
        job.model.path, num_labels=1, use_safetensors=True,
        trust_remote_code=job.model.trust_remote_code,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    rm_options = options.model_copy(update={"steps": options.reward_model_steps,
                                            "epochs": options.reward_model_epochs,
                                            "lr": options.reward_model_lr})
    args = trainer_args(RewardConfig, rm_options, job, max_length=options.max_length)
    peft_config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                             target_modules=options.target_modules, task_type="SEQ_CLS")
    recorder = record_callback(lambda step, total, loss: None)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset,
                            processing_class=tokenizer, peft_config=peft_config,
                            callbacks=[recorder])
    quiet_trainer(trainer)
    trainer.train()
    shutil.rmtree(job.output_dir / "trainer", ignore_errors=True)
    merged = trainer.model.merge_and_unload().eval()
    for parameter in merged.parameters():
        parameter.requires_grad_(False)
    return merged, recorder


def pair_accuracy(reward: Any, job: TuneJob) -> float:
    """Share of preference rows whose chosen completion the reward scores above the rejected one."""
    rows = [row.conversational() for _, row in read_jsonl(job.data, PreferenceRow)]
    prompts = [message_text(r["prompt"]) for r in rows]
    chosen = reward(prompts, [message_text(r["chosen"]) for r in rows])
    rejected = reward(prompts, [message_text(r["rejected"]) for r in rows])
    return sum(c > r for c, r in zip(chosen, rejected)) / len(rows)


# -- the tuner ---------------------------------------------------------------------------------


class PPOTuner(BaseTuner):
    Options = PPOOptions

    @classmethod
    def planned_steps(cls, options: PPOOptions, rows: int) -> int | None:
        """None: trl's PPO loop keeps no checkpoints (its options refuse them), so it
        cannot keep states along the way."""
        return None

    @classmethod
    def nested_components(cls, options: PPOOptions) -> list[harness.NestedComponent]:
        return reward_components(options)

    @classmethod
    def check_data(cls, path: Path, options: PPOOptions) -> None:
        # with a registered reward, prompts are enough; otherwise pairs train the reward model
        read_jsonl(path, PromptRow if options.reward else PreferenceRow)

    def tune(self, job: TuneJob) -> TuneResult:
        import torch
        from datasets import Dataset
        from peft import get_peft_model
        from transformers import AutoModelForSequenceClassification
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        options = self.options
        clock = time.perf_counter()
        reward = reward_model = None
        if options.reward:
            reward = make_reward("ppo", job, options.reward, options.reward_options)
        else:
            # the reward model trained below scores through the reward-model reward, asked
            # for by its registered name like any reward: it is another plugin's class
            reward_model = job.rewards.get("reward-model")
            if reward_model is None:
                raise UserError("ppo: without option 'reward' it trains a reward model, which "
                                "scores through the 'reward-model' reward; no plugin registers it")
        tokenizer = load_tokenizer_for(job)
        tokenizer.padding_side = "left"
        rows = read_prompts(job, tokenizer, options.max_length - options.max_completion_length)
        prompts: dict[tuple[int, ...], str] = {}
        for _, row, ids in rows:
            prompts.setdefault(tuple(ids), message_text(row.conversational()["prompt"]))
        rollouts = options.batch_size * options.gradient_accumulation
        if len(prompts) < rollouts:
            raise DataError(job.data, None, f"{len(prompts)} distinct prompts; ppo needs at least "
                            f"batch_size x gradient_accumulation = {rollouts}")
        pick_pad_token(tokenizer, [list(ids) for ids in prompts])

        log: dict[str, Any] = {"method": "ppo", "reward": options.reward or "reward model"}
        with PeakMemory() as memory:
            rm_tokens, rm_steps = 0, 0
            if reward is None:
                rm_tokenizer = load_tokenizer_for(job)
                rm_tokenizer.pad_token = tokenizer.pad_token
                rm_model, rm_recorder = train_reward_model(job, options, rm_tokenizer)
                rm_tokens, rm_steps = rm_recorder.tokens, len(rm_recorder.losses)
                kept = job.output_dir / "reward_model"
                reward = reward_model.from_loaded(
                    rm_model, rm_tokenizer, reward_model.Options(path=kept))
                log["reward_model_loss"] = rm_recorder.losses
                log["reward_model_pair_accuracy"] = pair_accuracy(reward, job)
                if options.keep_reward_model:
                    rm_model.save_pretrained(kept, safe_serialization=True)
                    rm_tokenizer.save_pretrained(kept)

            policy = load_model_for(job)
            value_model = AutoModelForSequenceClassification.from_pretrained(
                job.model.path, num_labels=1, use_safetensors=True,
                trust_remote_code=job.model.trust_remote_code,
            )
            for model in (policy, value_model):
                model.config.pad_token_id = tokenizer.pad_token_id
            policy.generation_config.pad_token_id = tokenizer.pad_token_id
            reward_module = text_reward_module(reward, tokenizer, prompts)
            dataset = Dataset.from_dict({"input_ids": [list(ids) for ids in prompts]})
            episodes = (options.steps * rollouts if options.steps
                        else max(rollouts, int(options.epochs * len(prompts))))
            args = trainer_args(
                PPOConfig, options, job,
                total_episodes=episodes, response_length=options.max_completion_length,
                temperature=options.temperature, stop_token="eos",
                kl_coef=options.kl_coef, cliprange=options.cliprange, vf_coef=options.vf_coef,
                cliprange_value=options.cliprange_value, gamma=options.gamma, lam=options.lam,
                num_ppo_epochs=options.num_ppo_epochs, num_mini_batches=options.num_mini_batches,
                whiten_rewards=options.whiten_rewards,
                missing_eos_penalty=options.missing_eos_penalty,
                num_sample_generations=0,
            )
            recorder = ppo_callback(job.on_step, options.vf_coef)
            policy = get_peft_model(policy, lora_config(options))
            # One optimiser, two learning rates: the adapter's and the full value model's.
            optimizer = torch.optim.AdamW([
                {"params": [p for p in policy.parameters() if p.requires_grad], "lr": options.lr},
                {"params": list(value_model.parameters()), "lr": options.value_lr},
            ], weight_decay=options.weight_decay)
            trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy,
                                 ref_model=None, reward_model=reward_module, train_dataset=dataset,
                                 value_model=value_model, optimizers=(optimizer, None),
                                 callbacks=[recorder])
            quiet_trainer(trainer)
            # what is trained: the policy's adapter and the whole value model
            trainable, total = count_parameters(trainer.model)
            trainer.train()
        out = job.output_dir / "adapter"
        trainer.policy_model.save_pretrained(out, safe_serialization=True)
        shutil.rmtree(job.output_dir / "trainer", ignore_errors=True)
        recorder.seconds = time.perf_counter() - clock
        recorder.tokens = rm_tokens + reward_module.backbone.tokens
        log["reward_model_steps"] = rm_steps
        log["steps"] = recorder.history
        write_log(job, log)
        record = training_record(recorder, trainer.state.global_step, memory, trainer.model,
                                 trainable, total)
        return TuneResult("adapter", out, record)


@harness.hookimpl
def harness_register_tuners(register):
    register("ppo", PPOTuner)

