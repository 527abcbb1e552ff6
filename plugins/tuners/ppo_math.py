"""The arithmetic of PPO for language models, on tensors of rollouts: no models, no I/O.

Written here from the published descriptions, not taken from a library: PPO's clipped
surrogate and clipped value losses (Schulman et al. 2017, arXiv:1707.06347), generalised
advantage estimation (Schulman et al. 2016, arXiv:1506.02438), and the per-token KL
penalty to a reference model of RLHF (Ziegler et al. 2019, arXiv:1909.08593; Ouyang et
al. 2022). trl removed its PPO after 1.12 and torch has none; each function is small
enough to check by hand, and ``tests/test_ppo_math.py`` does.

Shapes: every tensor is ``[rollouts, completion tokens]``; ``mask`` is 1 on a rollout's
completion tokens (up to and including its EOS) and 0 on the padding after them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: below this standard deviation (relative to the mean's size) a batch of advantages is
#: taken as constant and only centred: dividing float noise by itself would turn it into
#: unit-sized advantages and move the policy on nothing
CONSTANT_SPREAD = 1e-6


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``values`` scaled to unit variance over the masked positions (and centred, unless
    ``shift_mean`` is False); padding comes back as 0. A batch whose spread is float noise
    (:data:`CONSTANT_SPREAD`) is only centred."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if count > 1:  # the unbiased variance, as a sample of the batch's tokens
        variance = variance * count / (count - 1)
    std = variance.sqrt()
    centred = values - mean
    if std <= CONSTANT_SPREAD * (1 + mean.abs()):
        whitened = centred if shift_mean else values
    else:
        whitened = centred / std if shift_mean else centred / std + mean
    return whitened * mask


def token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
             estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled token's log-probabilities
    (Schulman's "Approximating KL divergence", 2020): ``k1 = log pi - log pi_ref``, unbiased
    but negative for some tokens; ``k3 = (q - 1) - log q`` with ``q = pi_ref / pi``,
    unbiased too and never negative."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return (-log_ratio).exp() - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; known: k1, k3")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """RLHF's per-token reward: ``-kl_coef x KL`` at every completion token, plus the
    rollout's score (one number per rollout) at its last completion token."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and the value targets (returns) of each token.

    ``delta_t = r_t + gamma V_{t+1} - V_t`` with ``V`` = 0 after the last completion
    token; ``A_t = delta_t + gamma lam A_{t+1}``; returns = ``A + V``.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    following = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(following)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        following = delta + gamma * lam * following
        advantages[:, t] = following
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


@dataclass
class LossParts:
    loss: torch.Tensor  # what is minimised: the clipped policy loss + vf_coef x value loss
    policy: torch.Tensor
    value: torch.Tensor
    policy_clipfrac: torch.Tensor  # share of tokens whose ratio the clip held
    value_clipfrac: torch.Tensor
    approx_kl: torch.Tensor  # mean (log old - log new) / 2 squared, the policy's move
    ratio: torch.Tensor  # mean probability ratio new / old


def ppo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
             values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
             mask: torch.Tensor, cliprange: float, cliprange_value: float,
             vf_coef: float) -> LossParts:
    """PPO's clipped surrogate loss and clipped value loss, averaged over masked tokens.

    Policy: ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` with ``r = exp(log pi - log pi_old)``.
    Value: ``0.5 max((V - R)^2, (V_clipped - R)^2)``, ``V_clipped`` being the new value
    kept within ``cliprange_value`` of the rollout's.
    """
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    policy = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    value_errors = torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
    value = 0.5 * masked_mean(value_errors, mask)
    with torch.no_grad():
        policy_clipfrac = masked_mean((clipped > unclipped).float(), mask)
        value_clipfrac = masked_mean(((clipped_values - returns) ** 2
                                      > (values - returns) ** 2).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio ** 2, mask)
        mean_ratio = masked_mean(ratio, mask)
    return LossParts(policy + vf_coef * value, policy, value, policy_clipfrac, value_clipfrac,
                     approx_kl, mean_ratio)
