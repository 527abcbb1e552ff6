"""What an evaluator returned, checked before anything of it is stored: the types of its
records and their fields, one name per metric, one primary metric that is a number, one
index per sample. A bad result fails its own cell instead of the run."""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Callable, Iterable
from typing import Any

from harness.records import Alert, EvalResult, Metric, Sample

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40
_short.maxlist = 4


def _is_number(value: Any) -> bool:
    # numpy's floats and ints are numbers.Real too; a bool is not a score
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _field_problem(value: Any, name: str, ok: Callable[[Any], bool], wanted: str) -> str | None:
    return None if ok(value) else f"{name} {_short.repr(value)} is not {wanted}"


def _metric_problem(metric: Any) -> str | None:
    checks = [
        (metric.name, "name", lambda v: isinstance(v, str) and v != "", "a non-empty str"),
        (metric.value, "value", _is_number, "a number"),
        (metric.n, "n", lambda v: v is None or _is_int(v), "an int or None"),
        (metric.stderr, "stderr", lambda v: v is None or _is_number(v), "a number or None"),
        (metric.higher_is_better, "higher_is_better", lambda v: isinstance(v, bool), "a bool"),
        (metric.primary, "primary", lambda v: isinstance(v, bool), "a bool"),
    ]
    return next(filter(None, (_field_problem(*check) for check in checks)), None)


def _texts(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _sample_problem(sample: Any) -> str | None:
    checks = [
        (sample.index, "index", _is_int, "an int"),
        # the store converts an int id to text, as it always has
        (sample.item_id, "item_id", lambda v: _texts(v) or _is_int(v), "a str, an int or None"),
        (sample.prompt, "prompt", _texts, "a str or None"),
        (sample.target, "target", _texts, "a str or None"),
        (sample.output, "output", _texts, "a str or None"),
        (sample.score, "score", lambda v: v is None or _is_number(v), "a number or None"),
        (sample.logprobs, "logprobs", lambda v: v is None or isinstance(v, (list, tuple)),
         "a list of numbers or None"),
        (sample.extra, "extra", lambda v: isinstance(v, dict), "a dict"),
        (sample.query, "query", _texts, "a str or None"),
    ]
    problem = next(filter(None, (_field_problem(*check) for check in checks)), None)
    if problem is None:
        for position, value in enumerate(sample.logprobs or ()):
            if not _is_number(value):
                return f"logprobs[{position}] {_short.repr(value)} is not a number"
    return problem


def _alert_problem(alert: Any) -> str | None:
    checks = [
        (alert.metric, "metric", lambda v: isinstance(v, str), "a str"),
        (alert.value, "value", _is_number, "a number"),
        (alert.threshold, "threshold", _is_number, "a number"),
        (alert.message, "message", lambda v: isinstance(v, str), "a str"),
    ]
    return next(filter(None, (_field_problem(*check) for check in checks)), None)


def _repeated(values: Iterable[Any]) -> Any:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def check_eval_result(result: Any) -> str | None:
    """What is wrong with what an evaluator returned (None when nothing is): the types of
    its records and their fields, one name per metric, at most one primary metric and not
    NaN (it cannot be ranked or compared), one index per sample. The store takes only a
    result that passes, so a bad one fails its own cell instead of the run."""
    if not isinstance(result, EvalResult):
        return f"a {type(result).__name__}, not a harness.EvalResult"
    for field, kind in (("metrics", Metric), ("samples", Sample), ("alerts", Alert)):
        records = getattr(result, field)
        if not isinstance(records, list):
            return f"{field} is a {type(records).__name__}, not a list"
        for position, record in enumerate(records):
            if not isinstance(record, kind):
                return (f"{field}[{position}] is a {type(record).__name__}, "
                        f"not a harness.{kind.__name__}")
            problem = {"metrics": _metric_problem, "samples": _sample_problem,
                       "alerts": _alert_problem}[field](record)
            if problem:
                # a metric or an alert is named by its metric's name when that is text
                name = getattr(record, "name", getattr(record, "metric", None))
                label = f" ({name!r})" if isinstance(name, str) else ""
                return f"{field}[{position}]{label}: {problem}"
    if not isinstance(result.info, dict):
        return f"info is a {type(result.info).__name__}, not a dict"
    names = [m.name for m in result.metrics]
    name = _repeated(names)
    if name is not None:
        return f"{names.count(name)} metrics are named {name!r}"
    primary = [m for m in result.metrics if m.primary]
    if len(primary) > 1:
        return (f"{len(primary)} metrics are primary ("
                + ", ".join(repr(m.name) for m in primary) + "): mark one")
    if primary and math.isnan(primary[0].value):
        return f"the primary metric {primary[0].name!r} is NaN"
    indexes = [s.index for s in result.samples]
    index = _repeated(indexes)
    if index is not None:
        return f"{indexes.count(index)} samples have index {index}"
    return None
