"""Security: remote code runs only when a suite opts in per model, weights load only from
safetensors, and no value from a suite reaches a shell."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness import ResolvedModel
from harness_plugins.backends.hf import HFBackend, HFOptions

from .conftest import REPO, small_suite

#: the module writes its marker at an absolute path: transformers copies remote code into
#: its own module cache before importing it, so a path beside ``__file__`` would land there
EVIL = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
from transformers import LlamaForCausalLM as EvilForCausalLM
"""


def _copy(tiny_model_path: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    return folder


def test_remote_code_in_a_model_folder_does_not_run_by_default(tmp_path, tiny_model_path):
    folder = _copy(tiny_model_path, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "CODE_RAN"
    (folder / "modeling_evil.py").write_text(EVIL.format(marker=str(marker)))
    backend = HFBackend(HFOptions())
    backend.load(ResolvedModel("m", "local", folder, "fp"))  # trust_remote_code defaults off
    assert type(backend.model).__name__ == "LlamaForCausalLM"  # the config's own class
    assert not marker.exists()


def test_pickled_weights_are_not_loaded(tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pickled"
    import torch

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    folder.mkdir()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # pickled weights only
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_path / name).exists():
            shutil.copy(tiny_model_path / name, folder / name)
    assert not list(folder.glob("*.safetensors"))
    with pytest.raises(OSError, match="safetensors"):
        HFBackend(HFOptions()).load(ResolvedModel("m", "local", folder, "fp"))


def test_no_code_path_hands_a_string_to_a_shell():
    """Every subprocess gets an argument list, never a command line; nothing calls a shell."""
    sources = [p for folder in ("harness", "plugins") for p in (REPO / folder).rglob("*.py")]
    for path in sources:
        text = path.read_text()
        assert not re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(", text), path
        for call in re.findall(r"subprocess\.\w+\(([^,)]*)", text):
            assert not call.strip().startswith(("f\"", "'", '"')), (path, call)


def test_shell_syntax_in_a_suite_is_only_a_bad_name(tmp_path):
    marker = tmp_path / "pwned"
    suite = small_suite(tmp_path)
    suite.write_text(suite.read_text().replace("builtin:tiny-random",
                                               f"builtin:tiny; touch {marker}"))
    result = CliRunner().invoke(main, ["run", str(suite)])
    assert result.exit_code == 2, result.output
    assert "unknown built-in model" in result.output or "builtin" in result.output
    assert not marker.exists()



@pytest.mark.parametrize("statement", [
    "SELECT * FROM read_text('{tmp}/secret.txt')",
    "SELECT * FROM read_blob('{tmp}/secret.txt')",
    "COPY (SELECT 1) TO '{tmp}/out.csv'",
])
@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_sql_cannot_use_the_stores_temporary_folder(tmp_path, monkeypatch, statement, where):
    """DuckDB exempts its temporary folder (``<store>.tmp``) from
    ``enable_external_access = false``: a query on a store whose ``.tmp`` folder exists
    could read and write files there. Queries get no temporary folder."""
    from harness.errors import UserError
    from harness.store import Store, query

    store = Store(tmp_path / "s.duckdb")
    store.initialise()
    temporary = tmp_path / "s.duckdb.tmp"
    temporary.mkdir()
    (temporary / "secret.txt").write_text("SECRET")
    monkeypatch.chdir(tmp_path)
    folder = temporary if where == "absolute" else temporary.relative_to(tmp_path)
    with pytest.raises(UserError, match="query refused: queries may only read the store"):
        query(store.path, statement.format(tmp=folder))
    assert sorted(p.name for p in temporary.iterdir()) == ["secret.txt"]
