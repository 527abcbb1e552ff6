"""The plugin host: built-ins, entry points (broken ones too), duplicates, switches."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import harness
from harness.cli import main
from harness.errors import UserError
from harness.plugins import PluginHost, PluginLoadError


def test_builtins_register_every_component_kind():
    host = PluginHost.load(entry_points=False)
    assert host.names("tuner") == ["dora", "dpo", "full", "grpo", "lora", "orpo", "ppo", "qlora"]
    assert host.names("evaluator") == ["benchmark", "drift", "perplexity", "safety"]
    assert host.names("backend") == ["hf", "vllm"]
    assert host.names("executor") == ["local", "ray"]
    assert host.names("reporter") == ["console", "html", "markdown", "mlflow"]
    assert host.names("model_source") == ["builtin", "hub", "local"]
    assert host.component("tuner", "lora").plugin == "tuners.lora"


def test_unknown_component_lists_the_known_ones():
    host = PluginHost.load(entry_points=False)
    with pytest.raises(UserError, match=r"unknown tuner 'lorax'; known: .*lora"):
        host.component("tuner", "lorax")


class _DuplicateLora:
    @harness.hookimpl
    def harness_register_tuners(self, register):
        register("lora", object)


def test_duplicate_component_names_both_plugins():
    host = PluginHost.load(entry_points=False, extra_plugins=[_DuplicateLora()])
    with pytest.raises(UserError) as info:
        host.registry()
    message = str(info.value)
    assert "tuner 'lora' is registered twice" in message
    assert "'tuners.lora'" in message and "_DuplicateLora" in message


class _RaisingRegistration:
    @harness.hookimpl
    def harness_register_evaluators(self, register):
        raise RuntimeError("boom in registration")


def test_plugin_raising_in_registration_is_named_and_others_still_work():
    plugin = _RaisingRegistration()
    host = PluginHost.load(entry_points=False, extra_plugins=[plugin])
    assert {"benchmark", "perplexity"} <= set(host.names("evaluator"))
    broken = [i for i in host.plugins() if i.error]
    assert len(broken) == 1
    assert "harness_register_evaluators raised RuntimeError: boom in registration" in broken[0].error


def _fake_entry_points(monkeypatch, *entry_points):
    real = metadata.entry_points

    def entry_points_for(group=None, **kwargs):
        if group == "harness":
            return metadata.EntryPoints(entry_points)
        return real(group=group, **kwargs) if group else real(**kwargs)

    monkeypatch.setattr(metadata, "entry_points", entry_points_for)


BROKEN = metadata.EntryPoint("broken", "harness_no_such_module_xyz", "harness")
WORKING = metadata.EntryPoint("extra", "tests.plugin_examples:ExtraTuner", "harness")


def test_broken_entry_point_is_reported_not_fatal(monkeypatch):
    _fake_entry_points(monkeypatch, BROKEN)
    host = PluginHost.load()
    info = next(i for i in host.plugins() if i.name == "broken")
    assert info.error.startswith("ModuleNotFoundError")
    assert "lora" in host.names("tuner")

    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in json.loads(result.output)["plugins"]}
    assert "harness_no_such_module_xyz" in listed["broken"]["error"]


def test_strict_switch_turns_a_broken_plugin_into_an_error(monkeypatch):
    _fake_entry_points(monkeypatch, BROKEN)
    monkeypatch.setenv("HARNESS_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="plugin 'broken'"):
        PluginHost.load()
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 2
    assert "plugin 'broken'" in result.output


def test_entry_point_plugin_registers_and_is_listed(monkeypatch):
    _fake_entry_points(monkeypatch, WORKING)
    host = PluginHost.load()
    assert "acme/extra" in host.names("tuner")
    info = next(i for i in host.plugins() if i.name == "extra")
    assert info.components == {"tuner": ["acme/extra"]}
    assert info.hooks == ["harness_register_tuners"]


def test_plugin_with_an_unknown_hook_is_reported(monkeypatch):
    _fake_entry_points(monkeypatch, metadata.EntryPoint(
        "typo", "tests.plugin_examples:MisspelledHook", "harness"))
    info = next(i for i in PluginHost.load().plugins() if i.name == "typo")
    assert info.error == "PluginLoadError: implements unknown hook(s): harness_register_tunres"


def test_plugins_command_lists_despite_a_duplicate_and_exits_2(monkeypatch):
    monkeypatch.setattr(PluginHost, "load", classmethod(
        lambda cls, **kw: _real_load(entry_points=False, extra_plugins=[_DuplicateLora()])))
    result = CliRunner().invoke(main, ["plugins", "--all", "--json"])
    assert result.exit_code == 2
    listed = json.loads(result.output[: result.output.rindex("}") + 1])
    duplicate = next(p for p in listed["plugins"] if p["name"] == "_DuplicateLora")
    assert duplicate["error"] == ("tuner 'lora' is registered twice: by plugin 'tuners.lora' "
                                  "and by plugin '_DuplicateLora'")


_real_load = PluginHost.load


def test_choose_and_block_switches(monkeypatch):
    _fake_entry_points(monkeypatch, WORKING)
    monkeypatch.setenv("HARNESS_PLUGINS", "")
    assert "acme/extra" not in PluginHost.load().names("tuner")
    monkeypatch.setenv("HARNESS_PLUGINS", "extra")
    assert "acme/extra" in PluginHost.load().names("tuner")
    monkeypatch.delenv("HARNESS_PLUGINS")
    monkeypatch.setenv("HARNESS_BLOCK_PLUGINS", "extra,tuners.lora")
    tuners = PluginHost.load().names("tuner")
    assert "lora" not in tuners and "acme/extra" not in tuners


def test_trace_switch_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_TRACE_PLUGINS", "1")
    PluginHost.load(entry_points=False).registry()
    assert "calling harness_register_tuners of plugin 'tuners.lora'" in capsys.readouterr().err


def test_help_and_plugins_do_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from harness.cli import main\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
        "assert CliRunner().invoke(main, ['plugins', '--all']).exit_code == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'lm_eval') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_built_in_plugins_install_as_harness_plugins(tmp_path):
    """The wheel maps the folder plugins/ to harness_plugins/; no bare top-level package."""
    import zipfile
    from pathlib import Path

    import harness_plugins

    repo = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(repo)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name == "tune_harness-0.1.0-py3-none-any.whl"  # the distribution's own name
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"harness", "harness_plugins", "tune_harness-0.1.0.dist-info"}
    assert "harness_plugins/tuners/lora.py" in names
    # the installed (editable) package resolves to the same source folder
    assert Path(harness_plugins.__file__).parent == repo / "plugins"


CONTRACT_ERRORS = [
    "plugin 'contracts' registered tuner 'acme/half': class HalfTuner does not implement tune()",
    "plugin 'contracts' registered tuner 'acme/duck': class NotATuner is not a subclass of "
    "harness.Tuner",
]


def test_a_class_that_breaks_its_contract_is_rejected_at_registration(monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, metadata.EntryPoint(
        "contracts", "tests.plugin_examples:BrokenContracts", "harness"))
    host = PluginHost.load()
    registry = host.registry(check=False)
    assert "acme/extra" in registry["tuner"]  # the plugin's good class is registered
    assert "acme/half" not in registry["tuner"] and "acme/duck" not in registry["tuner"]
    info = next(i for i in host.plugins() if i.name == "contracts")
    assert info.error == CONTRACT_ERRORS[0]
    with pytest.raises(UserError) as raised:
        host.registry()
    assert raised.value.lines == CONTRACT_ERRORS

    listed = CliRunner().invoke(main, ["plugins", "--json"])
    assert listed.exit_code == 2
    plugins = json.loads(listed.output[: listed.output.rindex("}") + 1])["plugins"]
    assert next(p for p in plugins if p["name"] == "contracts")["error"] == CONTRACT_ERRORS[0]

    suite = tmp_path / "suite.toml"
    suite.write_text('[suite]\nname = "s"\n[[models]]\nname = "m"\nsource = "builtin:tiny-random"\n'
                     '[[evaluators]]\nname = "e"\nkind = "perplexity"\ndata = "d.jsonl"\n')
    for command in ("validate", "run"):
        result = CliRunner().invoke(main, [command, str(suite)])
        assert result.exit_code == 2
        assert result.output.splitlines() == [f"harness: error: {line}" for line in CONTRACT_ERRORS]
    assert not (tmp_path / "results").exists()


def test_unknown_hooks_are_checked_for_plugins_given_directly_too():
    from .plugin_examples import MisspelledHook

    host = PluginHost.load(entry_points=False, extra_plugins=[MisspelledHook])
    info = next(i for i in host.plugins() if i.name == "MisspelledHook")
    assert info.error == "PluginLoadError: implements unknown hook(s): harness_register_tunres"
    assert "never" not in host.names("tuner")
    with pytest.raises(PluginLoadError, match="implements unknown hook"):
        PluginHost.load(entry_points=False, extra_plugins=[MisspelledHook], strict=True)


def test_every_builtin_plugin_loads_and_satisfies_its_contracts():
    host = PluginHost.load(entry_points=False, strict=True)
    assert [i.name for i in host.plugins() if i.error] == []
    assert sum(len(names) for names in host.registry().values()) == 29


def test_the_cli_builds_reporters_by_name_with_checked_options():
    host = PluginHost.load(entry_points=False)
    reporter = host.build("reporter", "html", {"out": "x.html"})
    assert reporter.options.out == "x.html"
    with pytest.raises(UserError, match=r"^reporter 'html' option 'colour': Extra inputs"):
        host.build("reporter", "html", {"colour": "red"})
