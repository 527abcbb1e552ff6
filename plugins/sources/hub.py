"""``hub:<org>/<name>[@revision]`` (or a bare hub id): download from the Hugging Face hub.

Works wherever the hub is reachable; files are cached by ``huggingface_hub``.
"""

from __future__ import annotations

from pathlib import Path

import harness
from harness import UserError, first_line

# Weights only as safetensors: pickled ``.bin`` checkpoints can run code on load.
_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


class HubSource(harness.ModelSource):
    def resolve(self, reference: str, *, base_dir: Path, trust_remote_code: bool) -> Path:
        from huggingface_hub import snapshot_download

        repo_id, _, revision = reference.partition("@")
        allow = _PATTERNS + (["*.py"] if trust_remote_code else [])
        try:
            return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=allow))
        except Exception as exc:
            raise UserError(
                f"cannot fetch model {reference!r} from the hub: {type(exc).__name__}: "
                f"{first_line(exc)}"
            ) from None


@harness.hookimpl
def harness_register_model_sources(register):
    register("hub", HubSource)
