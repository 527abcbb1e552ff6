"""The transformers backend: one base in memory, peft adapters switched in place.

Variants of one base never reload it: the first adapter wraps the loaded model
in a ``PeftModel``, later adapters are added with ``load_adapter``, and the base
itself is scored with the adapter layers disabled.
"""

from __future__ import annotations

import harness

# the class lives in the backends' shared module, which the vllm backend uses too
from harness_plugins.backends.loading import HFBackend, HFOptions

__all__ = ["HFBackend", "HFOptions"]


@harness.hookimpl
def harness_register_backends(register):
    register("hf", HFBackend)
