"""The suite several benchmarks run: SmolLM2-135M-Instruct with the given LoRA tuners,
scored on the quickstart's `capitals` benchmark and `general-text` perplexity."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "suites" / "data"


def lora_tuner(name: str, r: int, steps: int) -> str:
    return f"""
[[tuners]]
name = "{name}"
method = "lora"
data = "{DATA / 'task_sft.jsonl'}"
options = {{ r = {r}, alpha = {2 * r}, steps = {steps}, lr = 1e-3, batch_size = 8, max_length = 128 }}
"""


def suite_text(name: str, store: Path, tuners: str, reporters: str = "") -> str:
    return f"""
[suite]
name = "{name}"
store = "{store}"
{reporters}
[[models]]
name = "smollm2-135m"
source = "builtin:smollm2-135m-instruct"
{tuners}
[[evaluators]]
name = "capitals"
kind = "benchmark"
data = "{DATA / 'capitals.jsonl'}"

[[evaluators]]
name = "general-text"
kind = "perplexity"
data = "{DATA / 'general_text.jsonl'}"
"""
