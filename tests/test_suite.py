"""Suite validation: every problem at once, one line each, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.errors import UserError
from harness.plugins import PluginHost
from harness.suite import load_suite

from .conftest import small_suite


@pytest.fixture()
def host() -> PluginHost:
    return PluginHost.load(entry_points=False)


def test_valid_suite_resolves_paths_and_options(tmp_path, host):
    suite = load_suite(small_suite(tmp_path), host)
    assert suite.name == "small"
    assert suite.store_path == (tmp_path / "results" / "small.duckdb").resolve()
    (tuner,) = suite.tuners
    assert tuner.options.r == 4 and tuner.options.alpha == 8
    assert tuner.options.dropout == 0.0  # default filled in
    assert Path(tuner.data) == (tmp_path / "data" / "sft.jsonl").resolve()
    assert [e.role for e in suite.evaluators] == ["general", "general"]
    assert suite.backend.options.batch_size == 4


def test_three_errors_in_three_places_are_all_reported(tmp_path):
    path = small_suite(tmp_path)
    text = path.read_text()
    text = text.replace('method = "lora"', 'method = "lorax"')                      # unknown tuner
    text = text.replace('data = "data/text.jsonl"', 'data = "data/missing.jsonl"')  # no such file
    text = text.replace("batch_size = 4 }", 'batch_size = "big" }')                 # wrong type
    path.write_text(text)

    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 3, result.output
    assert all(line.startswith(f"harness: error: {path}: ") for line in lines)
    assert lines[0].endswith(
        "[[tuners]] #1 ('lora-a') field 'method': unknown tuner 'lorax'; known: "
        + ", ".join(PluginHost.load(entry_points=False).names("tuner")))
    assert lines[1].endswith(
        "[[evaluators]] #2 ('text') field 'data': no such file or folder: data/missing.jsonl")
    assert lines[2].endswith(
        "[backend] field 'options.batch_size': Input should be a valid integer, "
        "unable to parse string as an integer")


def test_bad_option_stops_run_before_anything_is_written(tmp_path):
    path = small_suite(tmp_path)
    path.write_text(path.read_text().replace("r = 4,", 'r = "four",'))
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().endswith(
        "[[tuners]] #1 ('lora-a') field 'options.r': "
        "Input should be a valid integer, unable to parse string as an integer")
    assert not (tmp_path / "results").exists()


def test_schema_errors_name_table_index_and_field(tmp_path, host):
    path = tmp_path / "s.toml"
    path.write_text(
        '[suite]\nname = "x"\ncolour = "red"\n'
        '[[models]]\nname = "m"\n'
        '[[evaluators]]\nname = "e"\nkind = "perplexity"\ndata = "d.jsonl"\nrole = "other"\n'
    )
    with pytest.raises(UserError) as info:
        load_suite(path, host)
    lines = info.value.lines
    assert f"{path.resolve()}: [suite] field 'colour': Extra inputs are not permitted" in lines
    assert f"{path.resolve()}: [[models]] #1 ('m') field 'source': Field required" in lines
    assert any("[[evaluators]] #1 ('e') field 'role': Input should be 'general'" in l for l in lines)


def test_toml_syntax_error_names_the_file_and_line(tmp_path, host):
    path = tmp_path / "broken.toml"
    path.write_text('[suite]\nname = "x"\nseed = = 3\n')
    with pytest.raises(UserError, match=r"broken.toml: TOML syntax error: .*line 3"):
        load_suite(path, host)


def test_base_is_reserved_for_the_untouched_model(tmp_path, host):
    path = small_suite(tmp_path)
    path.write_text(path.read_text().replace('name = "lora-a"', 'name = "base"'))
    with pytest.raises(UserError, match=r"\[\[tuners\]\] #1 \('base'\) field 'name': "
                                        r"'base' is reserved for the untouched model"):
        load_suite(path, host)


def test_semantic_problems_are_collected_together(tmp_path, host):
    path = small_suite(tmp_path)
    (tmp_path / "data" / "empty.jsonl").write_text("")
    text = path.read_text().replace('name = "text"', 'name = "mc"')
    text = text.replace('data = "data/text.jsonl"', 'data = "data/empty.jsonl"')
    text = text.replace('kind = "hf"', 'kind = "gpu-magic"')
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_suite(path, host)
    lines = info.value.lines
    assert len(lines) == 3
    assert "[[evaluators]] #2 ('mc') field 'name': duplicate name, first used by [[evaluators]] #1" in lines[0]
    assert "field 'data': data file is empty: data/empty.jsonl" in lines[1]
    assert "[backend] field 'kind': unknown backend 'gpu-magic'; known: hf" in lines[2]


def test_missing_suite_file(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert result.output.strip() == f"harness: error: {tmp_path / 'nope.toml'}: no such suite file"


def test_validate_counts_cells(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(small_suite(tmp_path))])
    assert result.exit_code == 0
    assert "1 model(s) x (base + 1 variant(s) from 1 tuner(s)) x 2 evaluator(s) = 4 cells" in result.output


def test_a_suite_file_with_a_utf8_bom_is_read(tmp_path):
    """Editors on Windows save UTF-8 with a byte order mark; TOML would call it an invalid
    statement at line 1."""
    path = small_suite(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "4 cells" in result.output
