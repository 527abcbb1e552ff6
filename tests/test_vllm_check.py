"""The vLLM backend's adapter-applied check, on hand-computed numbers (no engine needed:
tests_vllm/ runs the check on a real engine)."""

from __future__ import annotations

import pytest

from harness_plugins.backends.vllm_engine import adapter_gap, check_message


def test_gaps_are_mean_absolute_log_probability_differences():
    engine, adapter, base = [-1.0, -2.0], [-1.1, -2.1], [-3.0, -2.0]
    to_adapter, to_base, moved = adapter_gap(engine, adapter, base)
    assert (to_adapter, to_base, moved) == pytest.approx((0.1, 1.0, 1.0))


def test_an_engine_within_tolerance_passes():
    assert check_message("a", 0.05, 1.0, 1.0, tokens=16, tolerance=0.1) is None


def test_an_engine_running_the_base_is_named():
    message = check_message("lora-1", 0.8, 0.0, 0.8, tokens=32, tolerance=0.1)
    assert message == (
        "vLLM served adapter 'lora-1' wrongly: over 32 greedy tokens its log-probabilities "
        "differ from peft's by 0.800 on average (tolerance 0.1), from the base by 0.000 (the "
        "adapter moves the base by 0.800); its outputs sit closer to the untouched base: the "
        "adapter was not applied")


def test_an_engine_matching_neither_is_named():
    message = check_message("lora-1", 0.8, 0.9, 0.5, tokens=32, tolerance=0.1)
    assert message.endswith("its outputs match neither the adapter nor the base")
