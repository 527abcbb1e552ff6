"""A third-party reward registered through harness_register_rewards is found by kind and name."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

import harness
from harness import Options, Reward
from harness.plugins import PluginHost


class ShoutOptions(Options):
    weight: float = Field(default=1.0, gt=0)


class ShoutReward(Reward):
    """Rewards exclamation marks: ``weight`` per '!' in the completion."""

    Options = ShoutOptions

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [self.options.weight * text.count("!") for text in completions]


class ShoutPlugin:
    @harness.hookimpl
    def harness_register_rewards(self, register):
        register("acme/shout", ShoutReward)


def test_a_plugin_registers_a_reward():
    host = PluginHost.load(entry_points=False, extra_plugins=[ShoutPlugin()])
    registration = host.registry()["reward"]["acme/shout"]
    assert registration.cls is ShoutReward
    assert registration.plugin == "ShoutPlugin"
    assert host.component("reward", "acme/shout").cls is ShoutReward
    reward = registration.cls(registration.cls.Options(weight=0.5))
    assert isinstance(reward, Reward)
    assert reward(["p", "p"], ["Hi!!", "hi"]) == [1.0, 0.0]
