"""PPO, the classic RLHF pipeline (Ouyang et al. 2022; Schulman et al. 2017), LoRA policy.

1. **Reward.** Without the ``reward`` option, a reward model is trained first:
   a copy of the base with a one-output sequence-classification head
   (``AutoModelForSequenceClassification``, ``num_labels=1``), trained by trl's
   ``RewardTrainer`` on the preference rows (Bradley-Terry loss) with a LoRA
   adapter of the tuner's ``r``/``alpha``/``dropout``/``target_modules`` and a
   fully trained head, then merged. With ``reward = "<name>"`` a registered
   reward (``length``, ``contains``, ``reward-model``, a plugin's) is used
   instead and nothing is trained for it.
2. **PPO**, this project's own (:mod:`ppo_loop`, :mod:`ppo_math`; trl dropped its
   PPO after 1.12): the policy (the starting model plus a LoRA adapter) samples a
   completion of each prompt of a batch; the reward scores it; each completion
   token is charged ``kl_coef`` times its KL to the reference (the starting model:
   the adapter switched off); GAE turns rewards and the values of a linear value
   head on the policy's last hidden state into advantages; and ``num_ppo_epochs``
   passes of the clipped policy loss plus ``vf_coef`` times the clipped value loss
   train the adapter and the head.

Data: one JSONL. Without ``reward`` its rows are preference rows
(``prompt``/``chosen``/``rejected``): the reward model trains on the pairs and
their distinct prompts are PPO's prompt set. With ``reward`` the rows need only
``prompt`` (text or messages); other keys are ignored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

import harness
from harness import DataError, TuneJob, TuneResult, UserError, read_jsonl

from harness_plugins.tuners.records import PeakMemory, count_parameters, quiet_trainer, record_callback
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
    checkpoint_folder,
    kept_checkpoints,
    load_model_for,
    load_tokenizer_for,
    lora_config,
    trainer_args,
)

if TYPE_CHECKING:  # ppo_loop imports torch, which listing the plugins must not
    from harness_plugins.tuners.ppo_loop import PolicyWithValue


class PPOOptions(AdapterOptions):
    """``steps`` counts PPO updates: each samples ``batch_size x gradient_accumulation``
    completions and takes ``num_ppo_epochs x num_mini_batches`` optimiser steps on them
    (micro-batches of ``batch_size``). ``checkpoint_every`` counts updates too."""

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
        default=1e-3, gt=0, description="learning rate of the value head")
    kl_coef: float = Field(
        default=0.05, ge=0, description="weight of the per-token KL penalty to the reference")
    kl_estimator: Literal["k1", "k3"] = Field(
        default="k1", description="per-token KL estimate: log-ratio (k1) or never negative (k3)")
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
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="clip the gradient's norm per optimiser step; unset: no clip")

    @model_validator(mode="after")
    def _batches_fit(self) -> PPOOptions:
        rollouts = self.batch_size * self.gradient_accumulation
        if rollouts % self.num_mini_batches:
            raise ValueError(f"batch_size x gradient_accumulation ({rollouts}) must be a multiple "
                             f"of num_mini_batches ({self.num_mini_batches})")
        if self.max_completion_length >= self.max_length:
            raise ValueError(f"max_completion_length ({self.max_completion_length}) must be less "
                             f"than max_length ({self.max_length})")
        if self.reward is None and self.reward_options:
            raise ValueError("reward_options needs reward (a registered reward's name)")
        return self

    @property
    def rollouts(self) -> int:
        """Completions sampled per update."""
        return self.batch_size * self.gradient_accumulation


# -- the reward model ----------------------------------------------------------------------


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


def pick_pad_token(tokenizer: Any, prompt_ids: list[list[int]]) -> None:
    """Make the reward model's pad token a special token other than EOS that no prompt
    contains: its one-output head reads the last token that is not padding, and with
    SmolLM2's ``pad = eos = <|im_end|>`` every turn end would count as padding."""
    used = {token for ids in prompt_ids for token in ids}
    eos = tokenizer.eos_token_id
    current = tokenizer.pad_token_id
    if current is not None and current != eos and current not in used:
        return
    for token in [tokenizer.unk_token, *tokenizer.all_special_tokens]:
        if token is None:
            continue
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and token_id != eos and token_id not in used:
            tokenizer.pad_token = token
            return
    raise UserError(
        "ppo: the tokenizer has no padding token apart from EOS and the tokens the prompts use; "
        "the reward model's head needs one to find each pair's last token (add a pad token to "
        "the model's tokenizer, or give a registered reward with the option 'reward')"
    )


def reward_model_stage(job: TuneJob, options: PPOOptions, reward_class: Any,
                       prompt_ids: list[list[int]]) -> tuple[Any, dict[str, Any]]:
    """The reward model as a reward: trained here, or, when a killed run is resumed, the
    one that run trained and kept in its state folder (with ``checkpoint_every``)."""
    from transformers import AutoModelForSequenceClassification

    saved = job.output_dir / "trainer" / "reward_model"
    info_file = saved / "harness_reward_model.json"
    kept = job.output_dir / "reward_model"

    def reward_of(model: Any, tokenizer: Any) -> Any:
        return reward_class.from_loaded(model, tokenizer, reward_class.Options(path=kept))

    if info_file.is_file():
        info = json.loads(info_file.read_text(encoding="utf-8"))
        remote = job.model.trust_remote_code
        tokenizer = harness.load_tokenizer(saved, trust_remote_code=remote)
        model = AutoModelForSequenceClassification.from_pretrained(
            saved, use_safetensors=True, trust_remote_code=remote)
        model.eval().requires_grad_(False)
    else:
        tokenizer = load_tokenizer_for(job)
        pick_pad_token(tokenizer, prompt_ids)
        model, recorder = train_reward_model(job, options, tokenizer)
        info = {"reward_model_loss": recorder.losses, "reward_model_steps": len(recorder.losses),
                "reward_model_tokens": recorder.tokens}
        # scored once, after training: a resumed run takes the accuracy from the saved info
        info["reward_model_pair_accuracy"] = pair_accuracy(reward_of(model, tokenizer), job)
        if options.checkpoint_every:  # a resumed run scores with this same model
            partial = saved.with_name("reward_model.partial")
            shutil.rmtree(partial, ignore_errors=True)
            save_reward_model(model, tokenizer, partial)
            (partial / info_file.name).write_text(json.dumps(info), encoding="utf-8")
            partial.rename(saved)
    if options.keep_reward_model:
        save_reward_model(model, tokenizer, kept)
    return reward_of(model, tokenizer), info


def save_reward_model(model: Any, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


# -- the tuner ---------------------------------------------------------------------------------


class PPOTuner(BaseTuner):
    Options = PPOOptions

    @classmethod
    def planned_steps(cls, options: PPOOptions, rows: int) -> int | None:
        """``steps`` when set (PPO updates); by epochs the count depends on the distinct
        prompts, which the row count does not tell."""
        return options.steps

    @classmethod
    def nested_components(cls, options: PPOOptions) -> list[harness.NestedComponent]:
        return reward_components(options)

    @classmethod
    def check_data(cls, path: Path, options: PPOOptions) -> None:
        # with a registered reward, prompts are enough; otherwise pairs train the reward model
        read_jsonl(path, PromptRow if options.reward else PreferenceRow)

    def tune(self, job: TuneJob) -> TuneResult:
        from peft import get_peft_model

        from harness_plugins.tuners import ppo_loop

        options = self.options
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
        rows = read_prompts(job, tokenizer, options.max_length - options.max_completion_length)
        prompts: dict[tuple[int, ...], str] = {}
        for _, row, ids in rows:
            prompts.setdefault(tuple(ids), message_text(row.conversational()["prompt"]))
        if len(prompts) < options.rollouts:
            raise DataError(job.data, None, f"{len(prompts)} distinct prompts; ppo needs at least "
                            f"batch_size x gradient_accumulation = {options.rollouts}")
        prompt_ids, prompt_texts = [list(ids) for ids in prompts], list(prompts.values())
        updates = options.steps or max(1, int(options.epochs * len(prompts)) // options.rollouts)
        state_folder = job.output_dir / "trainer"

        log: dict[str, Any] = {"method": "ppo", "reward": options.reward or "reward model"}
        reward_model_tokens = 0
        with PeakMemory() as memory:
            if reward is None:
                reward, info = reward_model_stage(job, options, reward_model, prompt_ids)
                reward_model_tokens = info.pop("reward_model_tokens")
                log.update(info)
            policy = get_peft_model(load_model_for(job), lora_config(options))
            if options.gradient_checkpointing:
                policy.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False})
            model = ppo_loop.PolicyWithValue(policy, options.temperature)
            model.check_logits(prompt_ids[0])
            optimizer, scheduler = optimiser(model, options, updates)
            done, progress = 0, {"history": [], "tokens": 0, "seconds": 0.0}
            saved = ppo_loop.last_state(state_folder)
            if saved is not None:
                done, progress = ppo_loop.load_state(saved, model, optimizer, scheduler)
            clock = ppo_loop.Clock(progress["seconds"])
            stop_ids = stop_tokens(tokenizer, policy)
            for number in range(done + 1, updates + 1):
                chosen = ppo_loop.prompt_batch(len(prompt_ids), job.seed, number - 1,
                                               options.rollouts)
                batch = ppo_loop.collect(model, [prompt_ids[i] for i in chosen],
                                         [prompt_texts[i] for i in chosen], reward, tokenizer,
                                         stop_ids, options, first=number == 1)
                metrics = ppo_loop.update(model, batch, optimizer, scheduler, options)
                progress["tokens"] += batch.tokens
                progress["history"].append({"step": number, **metrics, "seconds": clock.seconds})
                job.on_step(number, updates, metrics["loss"])
                if job.save_every and number % job.save_every == 0 and number < updates:
                    policy.save_pretrained(checkpoint_folder(job, number) / "adapter",
                                           safe_serialization=True)
                if (options.checkpoint_every and number % options.checkpoint_every == 0
                        and number < updates):
                    progress["seconds"] = clock.seconds
                    ppo_loop.save_state(state_folder, number, model, optimizer, scheduler,
                                        progress)
            trainable, total = count_parameters(policy)
            head = sum(p.numel() for p in model.value_head.parameters())
        out = job.output_dir / "adapter"
        policy.save_pretrained(out, safe_serialization=True)
        shutil.rmtree(state_folder, ignore_errors=True)
        log["steps"] = progress["history"]
        write_log(job, log)
        record = harness.TrainingRecord(
            steps=updates, loss_curve=[h["loss"] for h in progress["history"]],
            seconds=clock.seconds, train_tokens=reward_model_tokens + progress["tokens"],
            peak_memory_mb=memory.megabytes, trainable_params=trainable + head,
            total_params=total + head)
        return TuneResult("adapter", out, record, kept_checkpoints(job, "adapter", updates))


def optimiser(model: PolicyWithValue, options: PPOOptions, updates: int) -> tuple[Any, Any]:
    """AdamW with two learning rates (the adapter's ``lr``, the value head's ``value_lr``)
    and transformers' schedule, stepped once per update (``warmup`` counts updates)."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW([
        {"params": model.trainable(), "lr": options.lr},
        {"params": list(model.value_head.parameters()), "lr": options.value_lr},
    ], weight_decay=options.weight_decay)
    warmup = options.warmup if options.warmup >= 1 else options.warmup * updates
    name = ("constant_with_warmup" if options.schedule == "constant" and warmup
            else options.schedule)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=round(warmup),
                              num_training_steps=updates)
    return optimizer, scheduler


def stop_tokens(tokenizer: Any, policy: Any) -> set[int]:
    """The tokens that end a completion: the tokenizer's EOS and the model's generation EOS."""
    configured = policy.generation_config.eos_token_id
    stops = set(configured if isinstance(configured, list) else [configured])
    stops.add(tokenizer.eos_token_id)
    stops.discard(None)
    if not stops:
        raise UserError("ppo: the model's tokenizer has no EOS token; completions could not end")
    return stops


@harness.hookimpl
def harness_register_tuners(register):
    register("ppo", PPOTuner)
