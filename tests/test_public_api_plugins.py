"""A plugin written against docs/plugin_hooks.md alone, importing only ``harness``, works for
each component kind.

``ToyPlugin`` registers one component of every kind, all pure Python: a model source
(``toy:NAME`` makes a folder holding ``model.json``), a backend whose "model" adds two
numbers and is off by the offset in its weights, a tuner that picks the offset its reward
likes best and writes it as a ``weights`` folder, that reward, an exact-match evaluator that
also measures bits per byte, an executor that runs units in order and records them, and a
reporter that writes the leaderboard as CSV. Every number asserted is worked out by hand in
the comments.

The plugin side below imports only ``harness``; the tests use the ``run_harness`` fixture
(harness.testing) and, for the host side, ``harness.plugins.PluginHost`` and ``harness.cli``.
"""

from __future__ import annotations

import csv
import json
import math
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

import harness

from .conftest import write_jsonl

# What the components saw, reset before every test.
CALLS: dict[str, list[Any]] = {}


def _record(what: str, value: Any) -> None:
    CALLS.setdefault(what, []).append(value)


@pytest.fixture(autouse=True)
def _fresh_calls():
    CALLS.clear()
    yield
    CALLS.clear()


# -- the plugin: only `harness` below this line -------------------------------------------------


def add(prompt: str) -> int:
    """The toy task: a prompt "a+b" asks for a + b."""
    left, right = prompt.split("+")
    return int(left) + int(right)


class ToySource(harness.ModelSource):
    """``toy:NAME``: a model folder whose one file says the model is off by one."""

    def resolve(self, reference: str, *, base_dir: Path, trust_remote_code: bool) -> Path:
        _record("resolve", (reference, base_dir, trust_remote_code))
        if not reference.isidentifier():
            raise harness.UserError(f"toy: {reference!r} is not a toy model name")
        folder = base_dir / "toy-models" / reference
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_text(json.dumps({"name": reference, "offset": 1}))
        return folder


class ToyBackendOptions(harness.Options):
    bits: float = Field(default=8.0, gt=0)  # bits per byte of a model that is never off


class ToyBackend(harness.Backend):
    """Answers "a+b" with a + b + offset; every byte of a scored text costs
    ``bits + |offset|`` bits. The base's offset is in ``model.json``, a variant's in its
    ``weights.json``."""

    Options = ToyBackendOptions

    def load(self, model: harness.ResolvedModel) -> None:
        _record("load", model.name)
        self.base_offset = json.loads((model.path / "model.json").read_text())["offset"]
        self.offset = self.base_offset

    def activate(self, variant: harness.Variant) -> None:
        if variant.kind == "base":
            self.offset = self.base_offset
        else:
            self.offset = json.loads((variant.path / "weights.json").read_text())["offset"]
        _record("activate", (variant.name, variant.kind, self.offset))

    def score_texts(self, texts: Sequence[str],
                    stride: int | None = None) -> list[harness.TokenScores]:
        logprob = -(self.options.bits + abs(self.offset)) * math.log(2)
        scores = []
        for text in texts:
            data = text.encode("utf-8")
            scores.append(harness.TokenScores(list(data), [logprob] * len(data), len(data)))
        return scores

    def generate(self, prompts: Sequence[str], max_new_tokens: int,
                 stop: Sequence[str] = ()) -> list[str]:
        outputs = []
        for prompt in prompts:
            text = str(add(prompt) + self.offset)[:max_new_tokens]  # one "token" per byte
            for marker in stop:
                text = text.split(marker, 1)[0]
            outputs.append(text)
        return outputs

    def route(self) -> dict[str, Any]:
        return {"path": "toy", "offset": self.offset}

    def close(self) -> None:
        _record("close", self.offset)


class ArithOptions(harness.Options):
    penalty: float = Field(default=1.0, gt=0)


class ArithReward(harness.Reward):
    """1 for the right sum, else -penalty x how far off it is."""

    Options = ArithOptions

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        _record("reward", list(prompts))
        scores = []
        for prompt, completion in zip(prompts, completions):
            off = abs(int(completion) - add(prompt))
            scores.append(1.0 if off == 0 else -self.options.penalty * off)
        return scores


class TuneRow(harness.DataRow):
    prompt: str = Field(pattern=r"^\d+\+\d+$")
    completion: str


class OffsetOptions(harness.Options):
    reward: str = "toy/arith"
    reward_options: dict[str, Any] = {}
    candidates: list[int] = Field(default=[-1, 0, 1, 2], min_length=1)


class OffsetTuner(harness.Tuner):
    """Tries every candidate offset on the tuning prompts and keeps the one the reward
    scores best; its loss is minus the mean reward."""

    Options = OffsetOptions
    Rows = TuneRow

    @classmethod
    def nested_components(cls, options: OffsetOptions) -> list[harness.NestedComponent]:
        return [harness.NestedComponent("reward", options.reward, options.reward_options)]

    def tune(self, job: harness.TuneJob) -> harness.TuneResult:
        started = time.perf_counter()
        reward_class = job.rewards[self.options.reward]
        reward = reward_class(reward_class.Options.model_validate(self.options.reward_options))
        prompts = [row.prompt for _, row in harness.read_jsonl(job.data, TuneRow)]
        losses = []
        total = len(self.options.candidates)
        for step, offset in enumerate(self.options.candidates, start=1):
            scores = reward(prompts, [str(add(p) + offset) for p in prompts])
            losses.append(-sum(scores) / len(scores))
            job.on_step(step, total, losses[-1])
        best = self.options.candidates[losses.index(min(losses))]
        weights = job.output_dir / "weights"
        weights.mkdir(exist_ok=True)
        (weights / "weights.json").write_text(json.dumps({"offset": best}))
        record = harness.TrainingRecord(
            steps=total, loss_curve=losses, seconds=time.perf_counter() - started,
            train_tokens=sum(len(p) for p in prompts) * total, peak_memory_mb=0.0,
            trainable_params=1, total_params=1)
        return harness.TuneResult("weights", weights, record)


class SumRow(harness.DataRow):
    prompt: str = Field(pattern=r"^\d+\+\d+$")
    expected: str
    id: harness.ItemId | None = None


class ExactOptions(harness.Options):
    max_new_tokens: int = Field(default=8, gt=0)


class ExactEvaluator(harness.Evaluator):
    """Exact match of the generated answer (primary), and bits per byte of
    "prompt=expected" (lower is better)."""

    Options = ExactOptions
    Rows = SumRow
    default_role = "target"

    def evaluate(self, backend: harness.Backend) -> harness.EvalResult:
        rows = [row for _, row in harness.read_jsonl(self.spec.data, SumRow)]
        outputs = backend.generate([r.prompt for r in rows], self.options.max_new_tokens,
                                   stop=["\n"])
        samples = [harness.Sample(index=i, item_id=r.id, prompt=r.prompt, target=r.expected,
                                  output=out, score=float(out == r.expected))
                   for i, (r, out) in enumerate(zip(rows, outputs))]
        scored = backend.score_texts([f"{r.prompt}={r.expected}" for r in rows])
        nats = -sum(sum(s.logprobs) for s in scored)
        num_bytes = sum(s.num_bytes for s in scored)
        n = len(samples)
        return harness.EvalResult(
            metrics=[harness.Metric("exact_match", sum(s.score for s in samples) / n, n,
                                    primary=True),
                     harness.Metric("bits_per_byte", nats / num_bytes / math.log(2), n,
                                    higher_is_better=False)],
            samples=samples, info={"max_new_tokens": self.options.max_new_tokens})


class InOrderOptions(harness.Options):
    dead_worker: bool = False  # pretend each unit's worker died before doing anything


class InOrderExecutor(harness.Executor):
    """Units one after another in this process, each recorded with the events it emitted;
    cells a failing worker left unfinished are recorded as failed."""

    Options = InOrderOptions

    def run(self, units, work: harness.Work, emit) -> None:
        for unit in units:
            events: list[str] = []
            finished: set[str] = set()
            _record("unit", (unit.model.name, [v.name for v in unit.variants],
                             len(unit.cells), events))

            def relay(event: Any) -> None:
                events.append(type(event).__name__)
                if isinstance(event, harness.CellFinished):
                    finished.add(event.cell.key)
                emit(event)

            try:
                if self.options.dead_worker:
                    raise RuntimeError("worker died")
                work(unit, relay)
            except Exception as exc:
                harness.fail_cells([c for c in unit.cells if c.key not in finished],
                                   f"{type(exc).__name__}: {exc}", traceback.format_exc(), relay)


class CsvReporter(harness.Reporter):
    """The suite's leaderboard as ``<suite>-toy.csv`` beside the store."""

    def report(self, context: harness.ReportContext) -> None:
        _record("report", context.run_id)
        columns, rows = harness.query(
            context.store_path,
            "SELECT variant, method, evaluator, role, metric, value, n FROM leaderboard "
            "WHERE suite = ? ORDER BY variant", [context.suite_name])
        out = context.store_path.with_name(f"{context.suite_name}-toy.csv")
        with out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)


class ToyPlugin:
    @staticmethod
    @harness.hookimpl
    def harness_register_model_sources(register):
        register("toy", ToySource)

    @staticmethod
    @harness.hookimpl
    def harness_register_backends(register):
        register("toy", ToyBackend)

    @staticmethod
    @harness.hookimpl
    def harness_register_rewards(register):
        register("toy/arith", ArithReward)

    @staticmethod
    @harness.hookimpl
    def harness_register_tuners(register):
        register("toy/offset", OffsetTuner)

    @staticmethod
    @harness.hookimpl
    def harness_register_evaluators(register):
        register("toy/exact", ExactEvaluator)

    @staticmethod
    @harness.hookimpl
    def harness_register_executors(register):
        register("toy/in-order", InOrderExecutor)

    @staticmethod
    @harness.hookimpl
    def harness_register_reporters(register):
        register("toy/csv", CsvReporter)

    @staticmethod
    @harness.hookimpl
    def harness_cell_finished(cell, outcome):
        _record("cell_finished", (cell.label, outcome.status, outcome.route))


# -- the tests ---------------------------------------------------------------------------------

TUNE_ROWS = [{"prompt": "1+2", "completion": "3"}, {"prompt": "4+4", "completion": "8"},
             {"prompt": "10+5", "completion": "15"}]
SUM_ROWS = [{"id": 1, "prompt": "2+2", "expected": "4"},
            {"id": "b", "prompt": "3+4", "expected": "7"},
            {"prompt": "20+22", "expected": "42"}, {"prompt": "9+9", "expected": "18"}]


def toy_suite(folder: Path, *, reward_options: str = "{ penalty = 0.5 }",
              reward: str = "toy/arith", executor_options: str = "{}") -> str:
    write_jsonl(folder / "data" / "tune.jsonl", TUNE_ROWS)
    write_jsonl(folder / "data" / "sums.jsonl", SUM_ROWS)
    return f"""
[suite]
name = "toy"
reporters = ["toy/csv"]

[[models]]
name = "adder"
source = "toy:adder"

[[tuners]]
name = "tuned"
method = "toy/offset"
data = "data/tune.jsonl"
options = {{ reward = "{reward}", reward_options = {reward_options} }}

[[evaluators]]
name = "sums"
kind = "toy/exact"
data = "data/sums.jsonl"
options = {{ max_new_tokens = 1 }}

[backend]
kind = "toy"

[executor]
kind = "toy/in-order"
options = {executor_options}
"""


def test_a_plugin_with_every_kind_of_component_runs_a_suite(run_harness, tmp_path):
    run = run_harness(toy_suite(tmp_path), plugins=[ToyPlugin], entry_points=False)

    assert (run.summary.planned, run.summary.cached, run.summary.done, run.summary.failed) \
        == (2, 0, 2, 0)
    assert run.query("SELECT variant_name, status, error, backend, backend_path "
                     "FROM cells ORDER BY variant_name") == [("base", "done", None, "toy", "toy"),
                                             ("tuned", "done", None, "toy", "toy")]

    # the model source: asked once, with the suite's folder and the default trust setting
    assert CALLS["resolve"] == [("adder", run.folder.resolve(), False)]

    # the tuner: with penalty 0.5 on the prompts 1+2, 4+4, 10+5, each candidate offset's
    # mean reward is -0.5 (offset -1), 1.0 (0), -0.5 (1) and -1.0 (2); the loss is its negative
    assert CALLS["reward"] == [["1+2", "4+4", "10+5"]] * 4
    assert run.query("SELECT name, method, status, kind, steps, loss_curve, final_loss "
                     "FROM variants") == [("tuned", "toy/offset", "done", "weights", 4,
                                           [0.5, -1.0, 0.5, 1.0], 1.0)]
    [(path,)] = run.query("SELECT path FROM variants")
    assert Path(path).name == "weights"
    assert json.loads((Path(path) / "weights.json").read_text()) == {"offset": 0}

    # the backend: loaded once, the base (off by one) then the tuned weights (offset 0), closed
    assert CALLS["load"] == ["adder"]
    assert CALLS["activate"] == [("base", "base", 1), ("tuned", "weights", 0)]
    assert CALLS["close"] == [0]
    infos = dict(run.query("SELECT variant_name, info FROM cells"))
    assert json.loads(infos["base"]) == {"max_new_tokens": 1, "backend": {"offset": 1}}
    assert json.loads(infos["tuned"]) == {"max_new_tokens": 1, "backend": {"offset": 0}}

    # the evaluator, with max_new_tokens = 1 (one byte): the base answers 5, 8, 4(3), 1(9)
    # for 4, 7, 42, 18: none right; the tuned variant answers 4, 7, 4(2), 1(8): two of four.
    # Bits per byte: 8 + |offset| for every byte, so 9 for the base and 8 for the variant.
    assert run.query("SELECT variant, method, evaluator, role, metric, value, n "
                     "FROM leaderboard ORDER BY variant") == [
        ("base", "base", "sums", "target", "exact_match", 0.0, 4),
        ("tuned", "toy/offset", "sums", "target", "exact_match", 0.5, 4)]
    bits = dict(run.query("SELECT c.variant_name, m.value FROM metrics m JOIN cells c USING (cell_key) "
                          "WHERE m.metric = 'bits_per_byte' AND NOT m.higher_is_better"))
    assert bits == {"base": pytest.approx(9.0), "tuned": pytest.approx(8.0)}
    assert run.query("SELECT c.variant_name, s.item_id, s.output, s.score, s.min_k "
                     "FROM samples s JOIN cells c USING (cell_key) "
                     "ORDER BY c.variant_name, s.item_index") == [
        ("base", "1", "5", 0.0, None), ("base", "b", "8", 0.0, None),
        ("base", None, "4", 0.0, None), ("base", None, "1", 0.0, None),
        ("tuned", "1", "4", 1.0, None), ("tuned", "b", "7", 1.0, None),
        ("tuned", None, "4", 0.0, None), ("tuned", None, "1", 0.0, None)]  # no token_moments

    # the executor: one unit, in order, with the events `work` emitted through it
    assert CALLS["unit"] == [("adder", ["base", "tuned"], 2, [
        "CellStarted", "CellFinished", "TuningStarted", "TuningStep", "TuningStep",
        "TuningStep", "TuningStep", "TuningFinished", "CellStarted", "CellFinished"])]

    # the lifecycle hook, with each cell's route
    assert CALLS["cell_finished"] == [("adder/base/sums", "done", {"path": "toy", "offset": 1}),
                                      ("adder/tuned/sums", "done", {"path": "toy", "offset": 0})]

    # the reporter: the leaderboard as CSV, read through harness.query
    assert CALLS["report"] == [run.summary.run_id]
    lines = (run.store.with_name("toy-toy.csv")).read_text().splitlines()
    assert lines == ["variant,method,evaluator,role,metric,value,n",
                     "base,base,sums,target,exact_match,0.0,4",
                     "tuned,toy/offset,sums,target,exact_match,0.5,4"]

    # a second run finds both cells in the store: nothing is tuned, loaded or executed,
    # and the reporter runs again (with no run id)
    CALLS.clear()
    again = run_harness(toy_suite(tmp_path), plugins=[ToyPlugin], entry_points=False)
    assert (again.summary.cached, again.summary.done, again.summary.failed) == (2, 0, 0)
    assert CALLS.get("unit") is None and CALLS.get("reward") is None and CALLS.get("load") is None
    assert CALLS["report"] == [None]


def test_an_executor_whose_worker_dies_records_the_cells_failed(run_harness, tmp_path):
    """``harness.fail_cells``: every cell starts and fails; the next run retries them."""
    dead = run_harness(toy_suite(tmp_path, executor_options="{ dead_worker = true }"),
                       plugins=[ToyPlugin], entry_points=False)
    assert (dead.summary.done, dead.summary.failed) == (0, 2)
    assert dead.query("SELECT variant_name, status, error FROM cells ORDER BY variant_name") == [
        ("base", "failed", "RuntimeError: worker died"),
        ("tuned", "failed", "RuntimeError: worker died")]
    assert CALLS["unit"] == [("adder", ["base", "tuned"], 2, [
        "CellStarted", "CellFinished", "CellStarted", "CellFinished"])]
    assert "load" not in CALLS and "reward" not in CALLS

    CALLS.clear()
    # the executor's options are no part of a cell key: the same cells, retried
    retried = run_harness(toy_suite(tmp_path), plugins=[ToyPlugin], entry_points=False)
    assert (retried.summary.cached, retried.summary.done, retried.summary.failed) == (0, 2, 0)
    assert retried.query("SELECT variant_name, status FROM cells ORDER BY variant_name") == [
        ("base", "done"), ("tuned", "done")]


def test_optional_backend_methods_default_as_documented():
    backend = ToyBackend(ToyBackendOptions())
    assert backend.options.bits == 8.0 and backend.tokenizer is None
    assert ToyBackend.supports("route") and ToyBackend.supports("close")
    assert not ToyBackend.supports("token_moments")
    assert not ToyBackend.supports("chat_prompt")
    assert backend.token_moments(["1+1"]) is None
    with pytest.raises(harness.Unsupported):
        backend.chat_prompt("hello")
    with pytest.raises(harness.Unsupported) as caught:
        harness.require_backend(backend, "toy/exact", "chat_prompt", "as_base")
    assert str(caught.value) == ("the toy/exact evaluator needs a backend with chat_prompt, "
                                 "as_base; ToyBackend has none")
    harness.require_backend(backend, "toy/exact", "route")  # implemented: no error


def test_nested_reward_options_are_validated_with_the_suite(run_harness, tmp_path):
    """The tuner's ``nested_components``: a bad reward option stops the run before anything
    runs, as one line naming the file, the tuner's table and the nested field."""
    suite = (tmp_path / "suite.toml").resolve()
    with pytest.raises(harness.UserError) as caught:
        run_harness(toy_suite(tmp_path, reward_options="{ penalty = 0 }"),
                    plugins=[ToyPlugin], entry_points=False)
    assert caught.value.lines == [
        f"{suite}: [[tuners]] #1 ('tuned') field 'options.reward_options.penalty': "
        "Input should be greater than 0 (reward 'toy/arith')"]

    with pytest.raises(harness.UserError) as caught:
        run_harness(toy_suite(tmp_path, reward="toy/nope"), plugins=[ToyPlugin],
                    entry_points=False)
    [line] = caught.value.lines
    assert line.startswith(f"{suite}: [[tuners]] #1 ('tuned') field 'options.reward': "
                           "unknown reward 'toy/nope'; known: ")
    assert "toy/arith" in line
    assert "resolve" not in CALLS  # nothing ran: not even the model source


# -- the contract, checked at registration ------------------------------------------------------


class CopyTuner:  # has the right methods, but is not a harness.Tuner
    Options = harness.Options

    def tune(self, job):
        raise AssertionError("never built")


class HalfBackend(harness.Backend):  # abstract methods left out
    def load(self, model):
        pass


class ListOptionsReward(harness.Reward):
    Options = dict  # not a pydantic model

    def __call__(self, prompts, completions):
        return [0.0 for _ in completions]


class MainRoleEvaluator(harness.Evaluator):
    default_role = "main"

    def evaluate(self, backend):
        raise AssertionError("never built")


class AcmePlugin:
    @staticmethod
    @harness.hookimpl
    def harness_register_tuners(register):
        register("acme/copy", CopyTuner)

    @staticmethod
    @harness.hookimpl
    def harness_register_backends(register):
        register("acme/half", HalfBackend)

    @staticmethod
    @harness.hookimpl
    def harness_register_rewards(register):
        register("acme/list", ListOptionsReward)

    @staticmethod
    @harness.hookimpl
    def harness_register_evaluators(register):
        register("acme/main", MainRoleEvaluator)


def test_a_class_that_breaks_its_contract_is_rejected_naming_the_plugin():
    from harness.plugins import PluginHost  # the host's side

    host = PluginHost.load(entry_points=False, extra_plugins=[AcmePlugin])
    with pytest.raises(harness.UserError) as caught:
        host.registry()
    expected = [
        "plugin 'AcmePlugin' registered tuner 'acme/copy': "
        "class CopyTuner is not a subclass of harness.Tuner",
        "plugin 'AcmePlugin' registered evaluator 'acme/main': "
        "MainRoleEvaluator.default_role 'main' is not one of general, target, safety, monitor",
        "plugin 'AcmePlugin' registered backend 'acme/half': "
        "class HalfBackend does not implement activate(), generate(), score_texts()",
        "plugin 'AcmePlugin' registered reward 'acme/list': "
        "ListOptionsReward.Options is not a pydantic model (harness.Options)",
    ]
    assert [line for line in caught.value.lines if "AcmePlugin" in line] == expected
    # none of them is registered; the plugin's first problem is its error in `harness plugins`
    registry = host.registry(check=False)
    assert not any(name.startswith("acme/") for kind in registry.values() for name in kind)
    [info] = [i for i in host.plugins() if i.name == "AcmePlugin"]
    assert info.error == expected[0]


def test_harness_validate_reports_a_bad_nested_reward_option_as_one_line(tmp_path):
    """The built-in ``grpo`` tuner names its reward with ``nested_components``."""
    from click.testing import CliRunner

    from harness.cli import main

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say hello."}])
    write_jsonl(tmp_path / "text.jsonl", [{"text": "A short text to score."}])
    suite = tmp_path / "suite.toml"
    suite.write_text("""
[suite]
name = "nested"

[[models]]
name = "tiny"
source = "builtin:tiny-random"

[[tuners]]
name = "grpo-short"
method = "grpo"
data = "prompts.jsonl"
options = { reward = "length", reward_options = { target_words = 0 } }

[[evaluators]]
name = "text"
kind = "perplexity"
data = "text.jsonl"
""", encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(suite)])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"harness: error: {suite.resolve()}: [[tuners]] #1 ('grpo-short') field "
        "'options.reward_options.target_words': Input should be greater than 0 (reward 'length')"]
