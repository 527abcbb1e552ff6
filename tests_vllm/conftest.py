"""Fixtures of the vLLM test target: SmolLM2-135M-Instruct (a real model) on a real engine.

This target runs only in the virtual environment that scripts/vllm-cpu-venv makes
(vLLM's CPU build beside harness): ``.venv-vllm/bin/python -m pytest tests_vllm``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def smollm2():
    """The built-in SmolLM2 folder, from the user's harness cache (built once, ~1 min)."""
    from harness import ResolvedModel
    from harness.models import fingerprint
    from harness_plugins.sources.builtin import builtin_model_path

    path = builtin_model_path("smollm2-135m-instruct")
    return ResolvedModel("smollm2", "builtin:smollm2-135m-instruct", path, fingerprint(path))


def make_adapter(model_path: Path, out: Path, *, seed: int, r: int = 8,
                 use_dora: bool = False) -> Path:
    """A peft LoRA adapter with random (not zero) weights: it visibly moves the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False, use_dora=use_dora)
    get_peft_model(model, config).save_pretrained(out)
    return out
