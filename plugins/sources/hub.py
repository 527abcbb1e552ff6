"""``hub:<org>/<name>[@revision]`` (or a bare hub id): download from the Hugging Face hub.

Works wherever the hub (``HF_ENDPOINT``, default huggingface.co) is reachable; files are
cached by ``huggingface_hub``, so a model fetched once also resolves offline.
"""

from __future__ import annotations

from pathlib import Path

import harness
from harness import UserError, first_line

# Weights only as safetensors: pickled ``.bin`` checkpoints can run code on load.
_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def _kinds(exc: BaseException) -> set[str]:
    """The exception's class names with its bases': huggingface_hub moved its error classes
    between modules across the versions harness accepts, so they are matched by name."""
    return {cls.__name__ for cls in type(exc).__mro__}


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def fetch_problem(exc: BaseException, repo_id: str, revision: str | None) -> str:
    """One line saying why ``snapshot_download`` failed, in the user's terms."""
    kinds = _kinds(exc)
    if "HFValidationError" in kinds:
        return f"not a hub repository id ('org/name', optionally '@revision'): {first_line(exc)}"
    if "GatedRepoError" in kinds:
        return (f"the hub repository {repo_id!r} is gated: accept its terms on the hub and "
                "log in with `hf auth login`")
    if "RepositoryNotFoundError" in kinds:
        return (f"no model repository {repo_id!r} on the hub at {_endpoint()} "
                "(or it is private or gated: log in with `hf auth login`)")
    if "RevisionNotFoundError" in kinds:
        return (f"the hub repository {repo_id!r} has no revision {revision!r} "
                "(a branch, tag or commit)")
    cause = exc.__cause__ or exc.__context__
    if "OfflineModeIsEnabled" in kinds or (cause is not None and "OfflineModeIsEnabled" in
                                           _kinds(cause)):
        return f"HF_HUB_OFFLINE is set and {repo_id!r} is not in the local cache"
    if "LocalEntryNotFoundError" in kinds:  # the hub did not answer and nothing is cached
        reason = f": {type(cause).__name__}: {first_line(cause)}" if cause is not None else ""
        return (f"cannot reach the hub at {_endpoint()}, and {repo_id!r} is not in the local "
                f"cache{reason}")
    return f"cannot fetch from the hub at {_endpoint()}: {type(exc).__name__}: {first_line(exc)}"


class HubSource(harness.ModelSource):
    def resolve(self, reference: str, *, base_dir: Path, trust_remote_code: bool) -> Path:
        from huggingface_hub import snapshot_download

        repo_id, _, revision = reference.partition("@")
        allow = _PATTERNS + (["*.py"] if trust_remote_code else [])
        try:
            path = Path(snapshot_download(repo_id, revision=revision or None,
                                          allow_patterns=allow))
        except Exception as exc:  # the client's errors are many and change between versions
            raise UserError(fetch_problem(exc, repo_id, revision)) from None
        if not (path / "config.json").is_file():
            raise UserError(f"the hub repository {repo_id!r} is not a model "
                            "folder (no config.json)")
        if not any(path.glob("*.safetensors")):
            # say so now: a folder of config and tokenizer only would fail later, less clearly
            raise UserError(f"the hub repository {repo_id!r} has no .safetensors "
                            "weights; harness loads weights only as safetensors (pickled "
                            ".bin/.pt files can run code when loaded)")
        return path


@harness.hookimpl
def harness_register_model_sources(register):
    register("hub", HubSource)
