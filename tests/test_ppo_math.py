"""PPO's arithmetic (plugins/tuners/ppo_math.py) against values computed by hand.

One fixed batch of two rollouts: the first has three completion tokens, the second two
(its third position is padding, filled with values that must not count). Every expected
number below is worked out in the comment beside it.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from harness_plugins.tuners import ppo_loop, ppo_math

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
LOGPROBS = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -1.5, -7.0]])
REF_LOGPROBS = torch.tensor([[-1.2, -0.5, -1.0], [-0.2, -1.0, -3.0]])
VALUES = torch.tensor([[0.5, 0.4, 0.3], [0.1, -0.2, 9.9]])
SCORES = torch.tensor([1.0, -2.0])


def _close(actual: torch.Tensor, expected: list[list[float]]) -> None:
    assert torch.allclose(actual, torch.tensor(expected), atol=1e-6), actual


def test_token_kl_estimators():
    # k1 = log pi - log pi_ref: -1 - (-1.2) = 0.2, 0, -2 - (-1) = -1; 0, -1.5 - (-1) = -0.5
    _close(ppo_math.token_kl(LOGPROBS, REF_LOGPROBS)[:, :2], [[0.2, 0.0], [0.0, -0.5]])
    # k3 = exp(-k1) - 1 + k1: e^-0.2 - 0.8, 0, e^1 - 2, ...
    k3 = ppo_math.token_kl(LOGPROBS, REF_LOGPROBS, "k3")
    assert k3[0, 0] == pytest.approx(math.exp(-0.2) - 0.8, abs=1e-6)
    assert k3[0, 2] == pytest.approx(math.e - 2, abs=1e-6)
    assert k3[1, 1] == pytest.approx(math.exp(0.5) - 1.5, abs=1e-6)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="unknown KL estimator 'k2'"):
        ppo_math.token_kl(LOGPROBS, REF_LOGPROBS, "k2")


def test_token_rewards_charge_the_kl_and_pay_the_score_at_the_last_token():
    kl = ppo_math.token_kl(LOGPROBS, REF_LOGPROBS) * MASK
    rewards = ppo_math.token_rewards(SCORES, kl, MASK, kl_coef=0.1)
    # row 0: -0.1 x [0.2, 0, -1] + score 1.0 at t=2   -> [-0.02, 0, 0.1 + 1.0]
    # row 1: -0.1 x [0, -0.5, pad] + score -2 at t=1  -> [0, 0.05 - 2.0, 0]
    _close(rewards, [[-0.02, 0.0, 1.1], [0.0, -1.95, 0.0]])


def _rewards() -> torch.Tensor:
    kl = ppo_math.token_kl(LOGPROBS, REF_LOGPROBS) * MASK
    return ppo_math.token_rewards(SCORES, kl, MASK, kl_coef=0.1)


def test_gae_advantages_and_returns():
    advantages, returns = ppo_math.gae(_rewards(), VALUES, MASK, gamma=0.9, lam=0.8)
    # delta_t = r_t + 0.9 V_{t+1} - V_t (V = 0 past the last token); A_t = delta_t + 0.72 A_{t+1}
    # row 0: delta_2 = 1.1 - 0.3 = 0.8                    A_2 = 0.8
    #        delta_1 = 0 + 0.27 - 0.4 = -0.13             A_1 = -0.13 + 0.72 x 0.8 = 0.446
    #        delta_0 = -0.02 + 0.36 - 0.5 = -0.16         A_0 = -0.16 + 0.72 x 0.446 = 0.16112
    # row 1 (padding at t=2 counts as V = 0, r = 0):
    #        delta_1 = -1.95 + 0 + 0.2 = -1.75            A_1 = -1.75
    #        delta_0 = 0 - 0.18 - 0.1 = -0.28             A_0 = -0.28 - 0.72 x 1.75 = -1.54
    _close(advantages, [[0.16112, 0.446, 0.8], [-1.54, -1.75, 0.0]])
    # returns = A + V on the completion tokens
    _close(returns, [[0.66112, 0.846, 1.1], [-1.44, -1.95, 0.0]])


def test_gae_with_gamma_and_lambda_one_is_the_reward_to_go_minus_the_value():
    advantages, returns = ppo_math.gae(_rewards(), VALUES, MASK, gamma=1.0, lam=1.0)
    # row 0: rewards to go [1.08, 1.1, 1.1] minus values [0.5, 0.4, 0.3]
    _close(advantages[:1], [[0.58, 0.7, 0.8]])
    _close(returns, [[1.08, 1.1, 1.1], [-1.95, -1.95, 0.0]])


def test_whitening_over_the_completion_tokens():
    advantages, _ = ppo_math.gae(_rewards(), VALUES, MASK, gamma=0.9, lam=0.8)
    tokens = [0.16112, 0.446, 0.8, -1.54, -1.75]
    mean, std = statistics.mean(tokens), statistics.stdev(tokens)
    expected = [(a - mean) / std for a in tokens]
    whitened = ppo_math.masked_whiten(advantages, MASK)
    _close(whitened, [expected[:3], expected[3:] + [0.0]])
    # without the shift the mean stays: scaled around it, as rewards are whitened
    unshifted = ppo_math.masked_whiten(advantages, MASK, shift_mean=False)
    assert unshifted[0, 0] == pytest.approx(expected[0] + mean, abs=1e-6)


def test_whitening_a_constant_batch_gives_zeros_not_amplified_noise():
    constant = torch.full((2, 3), 0.7) + torch.tensor([[0.0, 1e-9, 0.0], [0.0, 0.0, 5.0]])
    _close(ppo_math.masked_whiten(constant, MASK), [[0.0] * 3, [0.0] * 3])
    _close(ppo_math.masked_whiten(constant, MASK, shift_mean=False), [[0.7] * 3, [0.7, 0.7, 0.0]])


def test_clipped_policy_and_value_losses():
    old_logprobs = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -1.5, 0.0]])
    # log-ratios 0.1, -0.3, 0 and 0.5, 0 (the padding's 3.0 must not count)
    logprobs = old_logprobs + torch.tensor([[0.1, -0.3, 0.0], [0.5, 0.0, 3.0]])
    advantages = torch.tensor([[1.0, -1.0, 0.5], [2.0, -0.5, 0.0]])
    old_values = torch.tensor([[0.5, 0.4, 0.3], [0.1, -0.2, 0.0]])
    values = torch.tensor([[0.9, 0.35, 0.3], [0.1, 0.5, 7.0]])
    returns = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, 0.0]])
    parts = ppo_math.ppo_loss(logprobs, old_logprobs, advantages, values, old_values, returns,
                              MASK, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    # policy, max(-A r, -A clip(r, 0.8, 1.2)) per token:
    #   r = e^0.1 = 1.10517, A = 1   -> -1.10517 (inside the clip)
    #   r = e^-0.3 = 0.74082, A = -1 -> max(0.74082, 0.8) = 0.8 (clipped)
    #   r = 1, A = 0.5               -> -0.5
    #   r = e^0.5 = 1.64872, A = 2   -> max(-3.29744, -2.4) = -2.4 (clipped)
    #   r = 1, A = -0.5              -> 0.5
    policy = (-math.exp(0.1) + 0.8 - 0.5 - 2.4 + 0.5) / 5
    assert float(parts.policy) == pytest.approx(policy, abs=1e-6)
    assert float(parts.policy_clipfrac) == pytest.approx(2 / 5)
    # value, 0.5 max((V - R)^2, (V_clip - R)^2), V_clip within 0.2 of the old value:
    #   0.9 -> clip 0.7: max(0.01, 0.09) = 0.09 (clipped)     0.35: 0.1225     0.3: 0
    #   0.1: 0.01                                             0.5 -> clip 0.0: max(0.25, 1) = 1
    value = 0.5 * (0.09 + 0.1225 + 0.0 + 0.01 + 1.0) / 5
    assert float(parts.value) == pytest.approx(value, abs=1e-6)
    assert float(parts.value_clipfrac) == pytest.approx(2 / 5)
    assert float(parts.loss) == pytest.approx(policy + 0.1 * value, abs=1e-6)
    # half the mean squared log-ratio: 0.5 x (0.01 + 0.09 + 0 + 0.25 + 0) / 5
    assert float(parts.approx_kl) == pytest.approx(0.035, abs=1e-6)
    assert float(parts.ratio) == pytest.approx(
        (math.exp(0.1) + math.exp(-0.3) + 1 + math.exp(0.5) + 1) / 5, abs=1e-6)


def test_the_policy_loss_gradient_is_minus_the_advantage_inside_the_clip():
    # inside the clip, d(-A r)/d(log pi) = -A r, averaged over the 5 tokens; outside it, 0
    old_logprobs = torch.zeros(2, 3)
    logprobs = torch.tensor([[0.1, -0.3, 0.0], [0.5, 0.0, 0.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, -1.0, 0.5], [2.0, -0.5, 0.0]])
    zeros = torch.zeros(2, 3)
    ppo_math.ppo_loss(logprobs, old_logprobs, advantages, zeros, zeros, zeros, MASK, 0.2, 0.2,
                      0.0).loss.backward()
    expected = [[-math.exp(0.1) / 5, 0.0, -0.5 / 5], [0.0, 0.5 / 5, 0.0]]
    _close(logprobs.grad, expected)


def test_completion_mask_ends_at_the_first_stop_token():
    completions = torch.tensor([[5, 7, 2, 9, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    mask, stopped = ppo_loop.completion_mask(completions, {2})
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert stopped.tolist() == [True, False, True]


def test_prompt_batches_cover_every_prompt_once_per_pass_and_repeat_exactly():
    batches = [ppo_loop.prompt_batch(10, 3, index, 4) for index in range(5)]
    flat = [i for batch in batches for i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # each pass has its own order
    assert batches == [ppo_loop.prompt_batch(10, 3, index, 4) for index in range(5)]
    assert ppo_loop.prompt_batch(10, 4, 0, 4) != batches[0]  # the seed matters
