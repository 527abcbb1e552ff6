"""PPO's loop on a transformers causal LM with a peft LoRA adapter: rollouts, their
scoring, the optimiser steps, and a state that a killed run resumes from.

One model does four jobs. The policy is the model with its LoRA adapter; the reference
is the same model with the adapter switched off (the base, or with ``from`` the parent
variant's weights: no second copy); the value function is a linear head on the policy's
last hidden state (one forward pass gives log-probabilities and values); and the
rollouts are sampled from the policy by transformers' ``generate``. The arithmetic is
:mod:`ppo_math`'s. Nothing here comes from trl: its PPO left trl after 1.12.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness import UserError

from harness_plugins.tuners import ppo_math


@dataclass
class Rollouts:
    """One batch of sampled completions with what PPO needs of them (all on one device)."""

    ids: torch.Tensor  # [rollouts, prompt + completion], prompts left-padded
    attention: torch.Tensor  # 1 on prompt and completion tokens (through EOS), else 0
    prompt_length: int  # the padded prompts' length: completions start here
    mask: torch.Tensor  # [rollouts, completion]: 1 on completion tokens through EOS
    logprobs: torch.Tensor  # the policy's at sampling time ("old")
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    entropy: float  # mean per-token entropy of the sampling distribution
    scores: torch.Tensor  # [rollouts]: the reward (with the missing-EOS penalty)
    tokens: int  # prompt and completion tokens, padding left out


class PolicyWithValue:
    """A peft causal LM plus a scalar value head on its last hidden state."""

    def __init__(self, policy: Any, temperature: float) -> None:
        self.policy = policy
        model = policy.get_base_model()
        self.backbone = getattr(model, model.base_model_prefix)
        self.output_layer = model.get_output_embeddings()
        hidden = model.config.get_text_config().hidden_size
        # every value starts equal: zero weight, and a bias set by start_values
        self.value_head = torch.nn.Linear(hidden, 1, device=policy.device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.temperature = temperature
        # no dropout anywhere (LoRA's included), as in trl's PPO: the first pass over a batch
        # must see the probabilities it was sampled with, a ratio of exactly 1
        for module in policy.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0

    def start_values(self, scores: torch.Tensor) -> None:
        """Start every value at the first batch's mean score: the baseline a critic that
        knows nothing yet should give. A reward that never changes then yields advantages of
        exactly 0 and the policy does not move; a head starting at 0 would instead credit
        every token with the whole score, the last tokens most (GAE's lambda), and push the
        policy towards ending early however constant the reward."""
        with torch.no_grad():
            self.value_head.bias.fill_(float(scores.mean()))

    def check_logits(self, ids: list[int]) -> None:
        """Stop unless the model's logits are its output layer on its backbone's last hidden
        state (true of causal LMs in transformers without logit soft-capping or scaling):
        PPO reads log-probabilities and values from that one hidden state."""
        with torch.no_grad():
            tokens = torch.tensor([ids], device=self.policy.device)
            whole = self.policy(input_ids=tokens).logits[0, -1]
            hidden = self.backbone(input_ids=tokens).last_hidden_state[0, -1]
            own = self.output_layer(hidden)
        if not torch.allclose(whole.float(), own.float(), atol=1e-3, rtol=1e-3):
            raise UserError("ppo: this model's logits are not its output layer applied to its "
                            "last hidden state (logit scaling or soft-capping?); ppo reads both "
                            "from one forward pass and cannot train it")

    def score(self, ids: torch.Tensor, attention: torch.Tensor, prompt_length: int,
              with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Log-probabilities of the completion tokens at the sampling temperature, the value
        of the state before each, and the whole next-token log-distribution (for the
        entropy)."""
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=ids, attention_mask=attention, position_ids=positions,
                               use_cache=False).last_hidden_state
        states = hidden[:, prompt_length - 1:-1]  # the state that predicts each completion token
        distribution = (self.output_layer(states).float() / self.temperature).log_softmax(-1)
        tokens = ids[:, prompt_length:]
        logprobs = distribution.gather(-1, tokens[..., None]).squeeze(-1)
        values = self.value_head(states.float()).squeeze(-1) if with_values else None
        return logprobs, values, distribution

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]


# -- rollouts --------------------------------------------------------------------------------


def completion_mask(completions: torch.Tensor, stop_ids: set[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """1 on each completion's tokens up to and including its first stop token, and whether
    it stopped (False: it ran to the length limit)."""
    is_stop = torch.zeros_like(completions, dtype=torch.bool)
    for stop in stop_ids:
        is_stop |= completions == stop
    stopped = is_stop.any(dim=1)
    # the first stop's index (the last index when there is none)
    first = torch.where(stopped, is_stop.float().argmax(dim=1),
                        torch.full_like(stopped, completions.shape[1] - 1, dtype=torch.long))
    columns = torch.arange(completions.shape[1], device=completions.device)
    return (columns[None, :] <= first[:, None]).long(), stopped


def sample(model: PolicyWithValue, prompts: list[list[int]], pad_id: int, stop_ids: set[int],
           max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """Completions sampled from the policy at its temperature (plain sampling: no top-k,
    top-p or repetition penalty, so the log-probabilities PPO uses are those it sampled
    from)."""
    from transformers import GenerationConfig

    width = max(len(p) for p in prompts)
    device = model.policy.device
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                             device=device)
    config = GenerationConfig(do_sample=True, temperature=model.temperature, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                              eos_token_id=sorted(stop_ids))
    with torch.no_grad():
        output = model.policy.generate(input_ids=ids, attention_mask=attention,
                                       generation_config=config)
    mask, stopped = completion_mask(output[:, width:], stop_ids)
    return output, torch.cat([attention, mask], dim=1), width, mask, stopped


def collect(model: PolicyWithValue, prompts: list[list[int]], texts: list[str], reward: Any,
            tokenizer: Any, stop_ids: set[int], options: Any, first: bool = False) -> Rollouts:
    """Sample one completion per prompt, score it with ``reward``, and record the policy's
    and the reference's log-probabilities and the values, in micro-batches. ``first``: the
    run's first batch, whose mean score the values start at."""
    model.policy.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
    ids, attention, width, mask, stopped = sample(model, prompts, pad_id, stop_ids,
                                                  options.max_completion_length)
    completions = [tokenizer.decode(row[: int(n)], skip_special_tokens=True)
                   for row, n in zip(ids[:, width:].tolist(), mask.sum(dim=1) - stopped.long())]
    scores = torch.tensor([float(s) for s in reward(texts, completions)], device=ids.device)
    if options.missing_eos_penalty is not None:
        scores = scores - options.missing_eos_penalty * (~stopped).float()
    if first:
        model.start_values(scores)
    logprobs, ref_logprobs, values, entropy = [], [], [], 0.0
    with torch.no_grad():
        for rows in torch.split(torch.arange(len(prompts)), options.batch_size):
            lp, value, distribution = model.score(ids[rows], attention[rows], width)
            token_entropy = -(distribution.exp() * distribution).sum(-1)
            entropy += float((token_entropy * mask[rows]).sum())
            with model.policy.disable_adapter():
                ref, _, _ = model.score(ids[rows], attention[rows], width, with_values=False)
            logprobs.append(lp)
            values.append(value)
            ref_logprobs.append(ref)
    return Rollouts(ids, attention, width, mask.float(), torch.cat(logprobs) * mask,
                    torch.cat(ref_logprobs) * mask, torch.cat(values) * mask,
                    entropy / float(mask.sum()), scores, int(attention.sum()))


# -- one update ------------------------------------------------------------------------------


def update(model: PolicyWithValue, batch: Rollouts, optimizer: Any, scheduler: Any,
           options: Any) -> dict[str, float]:
    """Advantages of one batch of rollouts, then ``num_ppo_epochs`` passes over it in
    ``num_mini_batches`` shuffled mini-batches (one optimiser step each; micro-batches of
    ``batch_size`` accumulate). Returns the update's metrics, named as trl's PPO named them."""
    kl = ppo_math.token_kl(batch.logprobs, batch.ref_logprobs, options.kl_estimator) * batch.mask
    rewards = ppo_math.token_rewards(batch.scores, kl, batch.mask, options.kl_coef)
    if options.whiten_rewards:
        rewards = ppo_math.masked_whiten(rewards, batch.mask, shift_mean=False)
    advantages, returns = ppo_math.gae(rewards, batch.values, batch.mask, options.gamma,
                                       options.lam)
    advantages = ppo_math.masked_whiten(advantages, batch.mask)

    model.policy.train()
    count = len(batch.scores)
    sums: dict[str, float] = {}
    steps = 0
    for _ in range(options.num_ppo_epochs):
        order = torch.randperm(count)
        for mini in torch.split(order, count // options.num_mini_batches):
            optimizer.zero_grad(set_to_none=True)
            tokens = batch.mask[mini].sum()
            for rows in torch.split(mini, options.batch_size):
                logprobs, values, _ = model.score(batch.ids[rows], batch.attention[rows],
                                                  batch.prompt_length)
                parts = ppo_math.ppo_loss(
                    logprobs, batch.logprobs[rows], advantages[rows], values, batch.values[rows],
                    returns[rows], batch.mask[rows], options.cliprange, options.cliprange_value,
                    options.vf_coef)
                share = batch.mask[rows].sum() / tokens  # the mini-batch's mean over tokens
                (parts.loss * share).backward()
                for name in ("loss", "policy", "value", "policy_clipfrac", "value_clipfrac",
                             "approx_kl", "ratio"):
                    sums[name] = sums.get(name, 0.0) + getattr(parts, name).item() * share.item()
            if options.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(
                    model.trainable() + list(model.value_head.parameters()), options.max_grad_norm)
            optimizer.step()
            steps += 1
    used_lr = optimizer.param_groups[0]["lr"]
    scheduler.step()  # the schedule counts updates, as trl's PPO counted them
    mean = {name: total / steps for name, total in sums.items()}
    sequence_kl = float(kl.sum(dim=1).mean())
    score = float(batch.scores.mean())
    return {
        "loss": mean["loss"],
        "objective/scores": score,
        "objective/kl": sequence_kl,
        "objective/non_score_reward": -options.kl_coef * sequence_kl,
        "objective/rlhf_reward": score - options.kl_coef * sequence_kl,
        "objective/entropy": batch.entropy,
        "loss/policy_avg": mean["policy"],
        "loss/value_avg": mean["value"],
        "policy/clipfrac_avg": mean["policy_clipfrac"],
        "policy/approxkl_avg": mean["approx_kl"],
        "val/clipfrac_avg": mean["value_clipfrac"],
        "val/ratio": mean["ratio"],
        "completion_length": float(batch.mask.sum(dim=1).mean()),
        "lr": used_lr,
    }


# -- a state to resume from ------------------------------------------------------------------


def save_state(folder: Path, update_count: int, model: PolicyWithValue, optimizer: Any,
               scheduler: Any, progress: dict[str, Any]) -> None:
    """The training state after ``update_count`` updates, written whole or not at all
    (a temporary folder renamed into place); earlier states are removed after."""
    target = folder / f"update-{update_count}"
    partial = folder / f"update-{update_count}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.save({
        "update": update_count,
        "adapter": {n: p.detach().clone() for n, p in model.policy.named_parameters()
                    if p.requires_grad},
        "value_head": model.value_head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "progress": progress,
    }, partial / "state.pt")
    partial.rename(target)
    for older in folder.glob("update-*"):
        if older != target:
            shutil.rmtree(older, ignore_errors=True)


def last_state(folder: Path) -> Path | None:
    """The newest complete state under ``folder`` (None when there is none)."""
    done = [p for p in folder.glob("update-*") if not p.name.endswith(".partial")
            and (p / "state.pt").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def load_state(path: Path, model: PolicyWithValue, optimizer: Any,
               scheduler: Any) -> tuple[int, dict[str, Any]]:
    """Put a saved state back; returns its update count and progress."""
    state = torch.load(path / "state.pt", weights_only=True)
    parameters = dict(model.policy.named_parameters())
    with torch.no_grad():
        for name, value in state["adapter"].items():
            parameters[name].copy_(value)
    model.value_head.load_state_dict(state["value_head"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["update"]), state["progress"]


class Clock:
    """Seconds spent training, across a resume (the earlier run's seconds carried over)."""

    def __init__(self, earlier: float = 0.0) -> None:
        self.started = time.perf_counter() - earlier

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def prompt_batch(count: int, seed: int, index: int, size: int) -> list[int]:
    """The prompts of update ``index`` (from 0): the prompt set is shuffled anew for each
    pass (seeded by ``seed`` + the pass) and read in order, ``size`` at a time, so a
    resumed run picks the same prompts without keeping any state for it."""
    chosen: list[int] = []
    while len(chosen) < size:
        epoch, offset = divmod(index * size + len(chosen), count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch))
        chosen.extend(order[offset: offset + size - len(chosen)].tolist())
    return chosen
