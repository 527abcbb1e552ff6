"""Model references: which source resolves them, where they are cached, their fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from harness.cache import cache_dir
from harness.errors import UserError
from harness.keys import NAMED_REFERENCE
from harness.plugins import PluginHost
from harness.records import ResolvedModel
from harness.suite import Suite
from harness.suite_file import ModelEntry, problem_line

_CHUNK = 1 << 20

#: ``source:rest`` where rest may start with ``/`` (``local:/models/x``), which
#: NAMED_REFERENCE leaves out so that data references never read a URL as a name
_SOURCE_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*(?:/[A-Za-z0-9][A-Za-z0-9_.-]*)?):(.*)$",
                            re.DOTALL)


def source_for(reference: str, base_dir: Path, sources: tuple[str, ...] = ()) -> tuple[str, str]:
    """Pick a source for a reference: ``name:rest`` names one (any rest when ``name`` is
    one of ``sources``); otherwise a folder or a hub id."""
    named = _SOURCE_PREFIX.match(reference)
    if named and (NAMED_REFERENCE.match(reference) or named[1] in sources):
        return named[1], named[2]
    looks_local = reference.startswith((".", "/", "~")) or (base_dir / reference).exists()
    return ("local" if looks_local else "hub"), reference


def fingerprint(folder: Path) -> str:
    """SHA-256 over every file of a model folder (weights, config, tokenizer).

    Hashing a few hundred MB takes about a second, so the digest is cached,
    keyed by each file's size and modification time.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        raise UserError(f"{folder}: model folder is empty")
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo_path = cache_dir() / "fingerprints.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    key = str(folder.resolve())
    entry = memo.get(key)
    if entry and entry.get("stamp") == stamp:
        return entry["digest"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    result = digest.hexdigest()
    memo[key] = {"stamp": stamp, "digest": result}
    tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")  # concurrent runs never share a temp file
    tmp.write_text(json.dumps(memo))
    tmp.replace(memo_path)
    return result


def resolve_reference(name: str, reference: str, host: PluginHost, base_dir: Path,
                      trust_remote_code: bool = False) -> ResolvedModel:
    """Make a model reference (``builtin:x``, ``hub:org/name``, a folder) local and fingerprint it."""
    source_name, ref = source_for(reference, base_dir, tuple(host.names("model_source")))
    source = host.component("model_source", source_name).cls()
    path = Path(source.resolve(ref, base_dir=base_dir, trust_remote_code=trust_remote_code))
    return ResolvedModel(name=name, source=reference, path=path, fingerprint=fingerprint(path),
                         trust_remote_code=trust_remote_code)


def resolve_model(entry: ModelEntry, host: PluginHost, base_dir: Path,
                  where: str | None = None) -> ResolvedModel:
    """Make a suite's model local and fingerprint it. A source's error is re-raised naming
    the entry (``where``: the suite file and the entry's place, when the caller knows them)."""
    try:
        return resolve_reference(entry.name, entry.source, host, base_dir,
                                 entry.trust_remote_code)
    except UserError as exc:
        label = where or f"[[models]] ({entry.name!r})"
        raise UserError(*(f"{label} field 'source': {line}" for line in exc.lines)) from None


def resolve_suite_models(suite: Suite, host: PluginHost) -> list[ResolvedModel]:
    """Every ``[[models]]`` entry of a suite made local; errors name the suite file and entry."""
    return [resolve_model(entry, host, suite.base_dir,
                          f"{suite.path}: [[models]] #{index + 1} ({entry.name!r})")
            for index, entry in enumerate(suite.models)]


def resolve_evaluator_models(suite: Suite, host: PluginHost) -> dict[str, dict[str, ResolvedModel]]:
    """Models the evaluators need besides the one under test (a guard, a judge), by
    evaluator name and purpose: evaluator classes name them in ``required_models(options)``."""
    needed: dict[str, dict[str, ResolvedModel]] = {}
    for index, entry in enumerate(suite.evaluators):
        needed[entry.name] = {}
        for purpose, reference in entry.cls.required_models(entry.options).items():
            try:
                needed[entry.name][purpose] = resolve_reference(
                    f"{entry.name}:{purpose}", reference, host, suite.base_dir)
            except UserError as exc:
                label = f"[[evaluators]] #{index + 1} ({entry.name!r})"
                raise UserError(*(problem_line(suite.path, label, "options",
                                               f"the {purpose} model {reference!r}: {line}")
                                  for line in exc.lines)) from None
    return needed
