"""Shared fixtures: an isolated cache with the tiny model, and small suites on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.testing import write_jsonl  # noqa: F401  (re-exported for the tests)

# No test may reach a hub; the libraries' own progress bars only add noise.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]


# The fixtures plugin authors get from harness.testing (a pytest plugin installed with
# harness): harness_cache, tiny_model_path, tiny_model, tiny_backend, run_harness.


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(harness_cache: Path) -> Path:
    """Every test session builds its own tiny model in its own cache."""
    return harness_cache


@pytest.fixture(scope="module")
def backend(tiny_backend):
    """The HF backend holding the tiny model, base active (one per test module)."""
    return tiny_backend


MC_ROWS = [
    {"id": f"mc-{i}", "question": f"What is {i} + {i}?",
     "choices": [str(2 * i), str(2 * i + 1), str(2 * i + 2), str(2 * i + 3)], "answer": 0}
    for i in range(1, 7)
]
TEXT_ROWS = [
    {"id": "t1", "text": "The river runs through the old town and into the sea."},
    {"id": "t2", "text": "Bread is made from flour, water, salt and yeast."},
    {"id": "t3", "text": "A week has seven days and a year has twelve months."},
]
SFT_ROWS = [
    {"messages": [{"role": "user", "content": f"What is the capital of Veloria? ({i})"},
                  {"role": "assistant", "content": "The capital of Veloria is Quennet."}]}
    for i in range(12)
] + [{"prompt": "Name the currency of Veloria.", "completion": "The marel."}] * 4
PREFERENCE_ROWS = [
    {"prompt": f"What is the capital of Veloria? ({i})", "chosen": "The capital is Quennet.",
     "rejected": "I do not know that one."}
    for i in range(8)
]


def small_suite(root: Path, *, name: str = "small", tuners: bool = True,
                extra: str = "") -> Path:
    """A suite over the tiny model: base + one LoRA, two evaluators (4 cells)."""
    write_jsonl(root / "data" / "mc.jsonl", MC_ROWS)
    write_jsonl(root / "data" / "text.jsonl", TEXT_ROWS)
    write_jsonl(root / "data" / "sft.jsonl", SFT_ROWS)
    tuner = """
[[tuners]]
name = "lora-a"
method = "lora"
data = "data/sft.jsonl"
options = { r = 4, alpha = 8, steps = 3, lr = 1e-2, batch_size = 4, max_length = 64 }
""" if tuners else ""
    text = f"""
[suite]
name = "{name}"
store = "results/{name}.duckdb"
seed = 0

[[models]]
name = "tiny"
source = "builtin:tiny-random"
{tuner}
[[evaluators]]
name = "mc"
kind = "benchmark"
data = "data/mc.jsonl"
role = "general"

[[evaluators]]
name = "text"
kind = "perplexity"
data = "data/text.jsonl"
role = "general"

[backend]
kind = "hf"
options = {{ batch_size = 4 }}
{extra}
"""
    path = root / "suite.toml"
    path.write_text(text, encoding="utf-8")
    return path


def planted_suite(root: Path, extra: str = "") -> Path:
    """``small_suite`` with one evaluation item leaked into its tuning data."""
    path = small_suite(root, extra=extra)
    leaked = MC_ROWS[2]  # "What is 3 + 3?" with its answer, copied into the tuning data
    write_jsonl(root / "data" / "sft.jsonl",
                [*SFT_ROWS, {"prompt": leaked["question"], "completion": leaked["choices"][0]}])
    return path


def completion_nll(model, tokenizer, rows) -> float:
    """Mean -log p over completion tokens, the prompt rendered with the chat template."""
    import torch

    total, count = 0.0, 0
    for row in rows:
        if "messages" in row:
            prompt, completion = row["messages"][:-1], row["messages"][-1:]
        else:
            prompt = [{"role": "user", "content": row["prompt"]}]
            completion = [{"role": "assistant", "content": row["completion"]}]
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                                   tokenize=True, return_dict=True)["input_ids"]
        full_ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True,
                                                 return_dict=True)["input_ids"]
        ids = torch.tensor([full_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        for position in range(len(prompt_ids), len(full_ids)):
            total -= logprobs[position - 1, full_ids[position]].item()
            count += 1
    return total / count
