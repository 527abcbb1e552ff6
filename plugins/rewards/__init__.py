"""Rewards: what RL tuners (PPO, GRPO) optimise, as functions of prompt and completion text."""
