"""``local:<folder>`` (or any path): a model folder already on disk."""

from __future__ import annotations

from pathlib import Path

import harness
from harness import UserError


class LocalFolderSource(harness.ModelSource):
    """A folder with ``config.json``, tokenizer files and weights."""

    def resolve(self, reference: str, *, base_dir: Path, trust_remote_code: bool) -> Path:
        path = (base_dir / Path(reference).expanduser()).resolve()
        if not path.is_dir():
            raise UserError(f"model folder not found: {path}")
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a model folder (no config.json)")
        return path


@harness.hookimpl
def harness_register_model_sources(register):
    register("local", LocalFolderSource)
