"""The transformers backend: one base in memory, peft adapters switched in place.

Variants of one base never reload it: the first adapter wraps the loaded model
in a ``PeftModel``, later adapters are added with ``load_adapter``, and the base
itself is scored with the adapter layers disabled. The active adapter is merged
into copies of the weights it touches, so that it costs no more per forward pass
than the base; the base's own tensors are swapped back in, never unmerged by
arithmetic, so the base scores bit for bit as an untouched one (``as_base()``
inside a variant too).
"""

from __future__ import annotations

import harness

# the class lives in the backends' shared module, which the vllm backend uses too
from harness_plugins.backends.loading import HFBackend, HFOptions

__all__ = ["HFBackend", "HFOptions"]


@harness.hookimpl
def harness_register_backends(register):
    register("hf", HFBackend)
