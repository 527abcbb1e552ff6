"""Benchmarks through lm-eval, with the model already in memory.

``data`` is one of:

* ``lm_eval:<task>`` - any task lm-eval knows by name (its data must be loadable);
* a folder of lm-eval task YAML files, with ``options.task`` naming the task;
* a JSONL file in the harness's own offline format, turned into an lm-eval
  task config: ``{"question", "choices", "answer": <index>}`` rows make a
  multiple-choice task (``acc``, ``acc_norm``); ``{"question", "answer": "<text>"}``
  rows make a generation task scored by exact match.

lm-eval does the prompting, scoring and aggregation; the harness stores its
metrics as returned and its per-item results as samples.

The configs built here give lm-eval a Python function and field names, not Jinja
templates: lm-eval compiles a template string again for every document it renders
(``lm_eval.utils.apply_template`` keeps no cache), 0.4 ms each here, a tenth of a
5,000-item run with the tiny model (bench/eval_overhead.py). ``task_config_for_jsonl(...,
templates=True)`` gives the same task as a YAML file would say it; both render the same
prompts.
"""

from __future__ import annotations

import contextlib
import functools
import math
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

import harness
from harness import (
    Backend,
    DataError,
    DataRow,
    EvalResult,
    ItemId,
    Metric,
    Sample,
    UserError,
    first_line,
    read_jsonl,
)

LM_EVAL_PREFIX = "lm_eval:"
#: the prompt as a Jinja template (what a YAML task would say); ``prompt`` renders it
PROMPT = "Question: {{question}}\nAnswer:"


def prompt(doc: dict[str, Any]) -> str:
    """``PROMPT`` rendered for one document, without Jinja (the question is text, as
    ``ItemRow`` requires; Jinja would insert it unchanged)."""
    return f"Question: {doc['question']}\nAnswer:"


class BenchmarkOptions(harness.Options):
    task: str | None = Field(default=None, description="task name inside a YAML folder")
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: float | None = Field(default=None, gt=0, description="items per task (or a fraction < 1)")
    metric: str | None = Field(default=None, description="the primary metric; default: the first")
    apply_chat_template: bool = False
    max_gen_toks: int = Field(default=32, gt=0)
    batch_size: int | None = Field(default=None, gt=0,
                                   description="requests per batch; default: the backend's")


class ItemRow(DataRow):
    question: str = Field(min_length=1)
    choices: list[str] | None = None
    answer: int | str
    id: ItemId | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ItemRow:
        if self.choices is not None:
            if len(self.choices) < 2:
                raise ValueError("'choices' needs at least two entries")
            if not isinstance(self.answer, int) or not 0 <= self.answer < len(self.choices):
                raise ValueError("'answer' must be the index of the right choice")
        elif not isinstance(self.answer, str) or not self.answer.strip():
            raise ValueError("without 'choices', 'answer' must be the expected text")
        return self


def task_config_for_jsonl(name: str, path: Path, options: BenchmarkOptions, *,
                          templates: bool = False) -> dict[str, Any]:
    """An lm-eval task config for a file in our offline format: with ``templates``, as
    its YAML would say it (Jinja strings); else with the prompt as a function and the
    decontamination query as a field name, which lm-eval renders without compiling a
    template per document. Both give lm-eval the same prompts."""
    multiple_choice = _multiple_choice(path)
    config: dict[str, Any] = {
        "task": f"harness_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        # the rows as harness.read_jsonl reads them (a YAML file says only "json" above)
        **({} if templates else {"custom_dataset": offline_dataset}),
        "test_split": "test",
        # few-shot examples come from the same file; lm-eval leaves out the item itself
        "fewshot_split": "test",
        "doc_to_text": PROMPT if templates else prompt,
        # the question alone, for contamination checks (lm-eval's own setting)
        "should_decontaminate": True,
        "doc_to_decontamination_query": "{{question}}" if templates else "question",
        "metadata": {"version": 1.0},
    }
    if multiple_choice:
        config.update(
            output_type="multiple_choice",
            doc_to_choice="choices",
            doc_to_target="answer",
            metric_list=[
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        )
    else:
        config.update(
            output_type="generate_until",
            doc_to_target="answer",
            target_delimiter=" ",
            generation_kwargs={"until": ["\n"], "max_gen_toks": options.max_gen_toks,
                               "do_sample": False},
            filter_list=[{"name": "strip", "filter": [{"function": "remove_whitespace"},
                                                       {"function": "take_first"}]}],
            metric_list=[{"metric": "exact_match", "aggregation": "mean",
                          "higher_is_better": True, "ignore_case": True,
                          "ignore_punctuation": True}],
        )
    return config


def offline_dataset(data_files: dict[str, str], **_: Any) -> Any:
    """A file in our offline format as lm-eval's dataset (its ``custom_dataset``; lm-eval
    passes the config's metadata too), read by :func:`harness.read_jsonl`. ``datasets``'
    JSON loader would read an integer ``id`` beyond 64 bits as a float, and every other id
    of that file with it ("5.0"), or fail on it beside a text id. A row without an id gets
    its index, as lm-eval's ``doc_id`` would name it."""
    from datasets import Dataset, DatasetDict

    rows = read_jsonl(data_files["test"], ItemRow)
    docs = [{"question": row.question, "answer": row.answer,
             **({} if row.choices is None else {"choices": row.choices}),
             "id": str(index) if row.id is None else row.id}
            for index, (_, row) in enumerate(rows)]
    return DatasetDict({"test": Dataset.from_list(docs)})


def _multiple_choice(path: Path) -> bool:
    """Whether a file in our offline format holds multiple-choice rows (else generation
    rows). It is read and checked once per version of the file: the suite's validation
    reads it, and each of its cells asks again."""
    try:
        info = Path(path).stat()
    except OSError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        # raises the DataError that says why (a FIFO or /dev/zero is named, never read)
        read_jsonl(path, ItemRow)
        info = Path(path).stat()  # it became a regular file meanwhile
    return _read_kind(str(path), info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=64)
def _read_kind(path: str, mtime_ns: int, size: int) -> bool:
    rows = read_jsonl(path, ItemRow)
    kinds = {row.choices is not None for _, row in rows}
    if len(kinds) > 1:
        line = next(n for n, row in rows if (row.choices is not None) != (rows[0][1].choices is not None))
        raise DataError(Path(path), line, "mixes multiple-choice and generation rows", field="choices")
    return kinds == {True}


class BenchmarkEvaluator(harness.Evaluator):
    Options = BenchmarkOptions

    @classmethod
    def check_data(cls, path: Path, options: BenchmarkOptions) -> None:
        """The offline JSONL format is read and checked when the suite is validated; a task
        folder needs the task to run from it."""
        if path.is_dir():
            if not options.task:
                raise UserError(f"{path} is a folder of lm-eval tasks; set options.task to the "
                                "task to run from it")
            return
        task_config_for_jsonl("check", path, options)

    def _task(self) -> tuple[Any, Any]:
        """(what to pass as ``tasks``, the TaskManager that finds it)."""
        data = self.spec.data
        if data.startswith(LM_EVAL_PREFIX):
            return data[len(LM_EVAL_PREFIX):], task_manager(None, True)
        path = Path(data)
        if path.is_dir():
            if not self.options.task:
                raise UserError(f"evaluator {self.spec.name!r}: a task folder needs options.task")
            return self.options.task, task_manager(str(path), True)
        # a whole config needs no index of lm-eval's own tasks
        return task_config_for_jsonl(self.spec.name, path, self.options), task_manager(None, False)

    def evaluate(self, backend: Backend) -> EvalResult:
        from lm_eval import simple_evaluate

        task, manager = self._task()
        task_label = task if isinstance(task, str) else task["task"]
        lm = backend.lm_eval_model()
        default_batch = getattr(lm, "batch_size_per_gpu", None)
        if self.options.batch_size and default_batch is not None:
            lm.batch_size_per_gpu = self.options.batch_size  # HFLM's own batch setting
        try:
            with _without_environment_report():
                output = simple_evaluate(
                    model=lm,
                    tasks=[task],
                    task_manager=manager,
                    num_fewshot=self.options.num_fewshot,
                    limit=self.options.limit,
                    log_samples=True,
                    apply_chat_template=self.options.apply_chat_template,
                    random_seed=self.spec.seed,
                    numpy_random_seed=self.spec.seed,
                    torch_random_seed=self.spec.seed,
                    fewshot_random_seed=self.spec.seed,
                    verbosity="ERROR",
                )
        except Exception as exc:
            raise RuntimeError(f"lm-eval task {task_label!r} could not run: "
                               f"{type(exc).__name__}: {first_line(exc)}") from exc
        finally:
            if default_batch is not None:
                lm.batch_size_per_gpu = default_batch
        return self._collect(output)

    def _collect(self, output: dict[str, Any]) -> EvalResult:
        results = output["results"]
        metrics: list[Metric] = []
        for task_name, values in results.items():
            # a group of tasks keeps each subtask's metrics under its own prefix
            prefix = "" if len(results) == 1 else f"{task_name}/"
            higher = output.get("higher_is_better", {}).get(task_name, {})
            n = output.get("n-samples", {}).get(task_name, {}).get("effective")
            for key, value in values.items():
                # metric keys read "<metric>,<filter>"; others (alias, sample_len) are not scores
                if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                    continue
                metric, _, filter_name = key.partition(",")
                stderr = values.get(f"{metric}_stderr,{filter_name}")
                name = metric if filter_name in ("none", "") else f"{metric},{filter_name}"
                metrics.append(Metric(
                    prefix + name, float(value), n,
                    float(stderr) if isinstance(stderr, (int, float)) and not math.isnan(stderr) else None,
                    higher_is_better=bool(higher.get(metric, True)),
                ))
        if not metrics:
            raise RuntimeError("lm-eval returned no metrics")
        primary = metrics[0]
        if self.options.metric:
            matches = [m for m in metrics
                       if m.name.split(",")[0].split("/")[-1] == self.options.metric]
            if not matches:
                raise UserError(f"evaluator {self.spec.name!r}: metric {self.options.metric!r} "
                                f"not among {', '.join(m.name for m in metrics)}")
            primary = matches[0]
        primary.primary = True
        # each item's score is its value of the primary metric, so that the paired tests and
        # the gate judge the metric the leaderboard shows, in its units
        item_score = primary.name.split(",")[0].split("/")[-1]
        return EvalResult(metrics, self._samples(output, item_score),
                          info={"item_score": item_score})

    @staticmethod
    def _samples(output: dict[str, Any], item_score: str) -> list[Sample]:
        samples: list[Sample] = []
        for task_name, items in output.get("samples", {}).items():
            metric_names = [k.split(",")[0] for k in output["results"].get(task_name, {})]
            query = _decontamination_query(output.get("configs", {}).get(task_name, {}))
            for item in items:
                doc = item.get("doc", {})
                arguments = item.get("arguments") or [[None]]
                first = arguments[0]
                prompt = first[0] if isinstance(first, (list, tuple)) else first
                responses = item.get("filtered_resps") or []
                target = item.get("target")
                logprobs = None
                if responses and isinstance(responses[0], (list, tuple)):
                    # multiple choice: one (log-likelihood, is-greedy) per choice
                    logprobs = [float(r[0]) for r in responses]
                    # each request's continuation is that choice's text, as the task renders it
                    choices = [a[1] if isinstance(a, (list, tuple)) and len(a) > 1 else None
                               for a in arguments]
                    best = max(range(len(logprobs)), key=logprobs.__getitem__)
                    chosen = choices[best] if best < len(choices) else None
                    output_text = chosen.strip() if isinstance(chosen, str) else str(best)
                    if isinstance(target, int) and 0 <= target < len(choices) \
                            and isinstance(choices[target], str):
                        target = choices[target].strip()  # the right choice's text
                else:
                    output_text = str(responses[0]) if responses else None
                scores = {k: v for k, v in item.items()
                          if k in metric_names and isinstance(v, (int, float))}
                extra = {"task": task_name, "doc_id": item.get("doc_id"), **scores}
                samples.append(Sample(
                    index=len(samples),
                    item_id=str(doc["id"]) if isinstance(doc, dict) and "id" in doc else str(item.get("doc_id")),
                    prompt=prompt,
                    target=None if target is None else str(target),
                    output=output_text,
                    # no per-item value of the primary metric (a corpus-level metric such
                    # as BLEU): no score, so no paired test claims to judge that metric
                    score=float(scores[item_score]) if item_score in scores else None,
                    logprobs=logprobs,
                    extra=extra,
                    query=query(doc) if query is not None and isinstance(doc, dict) else None,
                ))
        return samples


#: what ``output["pretty_env_info"]`` says when the report was skipped
ENVIRONMENT_NOT_COLLECTED = "not collected: harness does not keep lm-eval's environment report"


@contextlib.contextmanager
def _without_environment_report() -> Iterator[None]:
    """While ``simple_evaluate`` runs, its closing environment report only notes that it
    was skipped: ``add_env_info`` (torch's ``collect_env``: ``pip list``, compilers, GPUs,
    each a subprocess; 1.3-4 s per call here) and ``get_git_commit_hash`` (``git
    describe``, which prints "fatal: not a git repository" outside one). Both ran once per
    cell, and the harness keeps neither.

    This replaces lm-eval's module attributes for the length of the call (put back after,
    whatever happens), because there is no other way to skip them: ``simple_evaluate`` has
    no switch for it, and calling ``lm_eval.evaluate`` directly would mean copying
    ``simple_evaluate``'s task setup (seeds, few-shot overrides), whose metrics the harness
    must equal. A function lm-eval drops or renames is not replaced."""
    import lm_eval.evaluator

    def note_skipped(storage: dict[str, Any]) -> None:
        storage["pretty_env_info"] = ENVIRONMENT_NOT_COLLECTED

    stand_ins = {"add_env_info": note_skipped, "get_git_commit_hash": lambda: None}
    originals = {name: getattr(lm_eval.evaluator, name) for name in stand_ins
                 if hasattr(lm_eval.evaluator, name)}
    for name in originals:
        setattr(lm_eval.evaluator, name, stand_ins[name])
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(lm_eval.evaluator, name, original)


@functools.cache
def task_manager(include_path: str | None, include_defaults: bool) -> Any:
    """One lm-eval TaskManager per process and task folder: building the index of lm-eval's
    own tasks reads thousands of YAML files (4 s here), which ``simple_evaluate`` would
    otherwise do again for every cell (it builds one when given none)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def _decontamination_query(config: dict[str, Any]) -> Any:
    """The task's ``doc_to_decontamination_query`` as a function of a document (what
    lm-eval's ``Task`` does with it), or None when the task defines none. A template is
    compiled once, not once per document as ``lm_eval.utils.apply_template`` would."""
    template = config.get("doc_to_decontamination_query")
    if not config.get("should_decontaminate") or not isinstance(template, str):
        return None
    from lm_eval.utils import env  # lm-eval's own Jinja environment

    try:
        compiled = env.from_string(template)
    except Exception:  # not a template: only a field name can fill it
        compiled = None

    def render(doc: dict[str, Any]) -> str | None:
        if template in doc:
            return str(doc[template])
        if compiled is None:
            return None
        try:
            return compiled.render(**doc)
        except Exception:  # a template this document cannot fill: no query for it
            return None

    return render


@harness.hookimpl
def harness_register_evaluators(register):
    register("benchmark", BenchmarkEvaluator)
