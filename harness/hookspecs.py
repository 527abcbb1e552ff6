"""Every hook harness calls. Implement them with ``@harness.hookimpl``.

Two kinds, on purpose:

* **registration hooks** (``harness_register_*``) hand the plugin a ``register``
  callback; the plugin calls ``register(name, component_class)`` for each named
  component a suite can refer to. The host calls every implementation, so the
  result never depends on plugin order, and a name registered twice is an error
  naming both plugins.
* **lifecycle hooks** are broadcast to every plugin that implements them
  (observers: progress, alerts, experiment trackers). Their return values are
  ignored.

Docs with an example per hook: ``docs/plugin_hooks.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from harness.version import PROJECT_NAME

if TYPE_CHECKING:
    from harness.events import CellOutcome, RunInfo, RunSummary
    from harness.records import Alert, CellPlan

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

#: Decorator for plugin hook implementations; plugins use it as ``@harness.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[str, Any], None]


# -- registration -------------------------------------------------------------


@hookspec
def harness_register_tuners(register: Register) -> None:
    """Register tuning methods: ``register("lora", LoraTuner)``.

    :param register: call with a name (used as ``method`` in ``[[tuners]]``)
        and a subclass of :class:`harness.Tuner`.
    """


@hookspec
def harness_register_evaluators(register: Register) -> None:
    """Register evaluators: ``register("perplexity", PerplexityEvaluator)``.

    :param register: call with a name (used as ``kind`` in ``[[evaluators]]``)
        and a subclass of :class:`harness.Evaluator`.
    """


@hookspec
def harness_register_reporters(register: Register) -> None:
    """Register reporters run at the end of ``harness run``.

    :param register: call with a name (listed in ``[suite] reporters``) and a
        subclass of :class:`harness.Reporter`.
    """


@hookspec
def harness_register_backends(register: Register) -> None:
    """Register inference backends (``[backend] kind``).

    :param register: call with a name and a subclass of
        :class:`harness.Backend`.
    """


@hookspec
def harness_register_executors(register: Register) -> None:
    """Register executors (``[executor] kind``) that run units of work.

    :param register: call with a name and a subclass of
        :class:`harness.Executor`.
    """


@hookspec
def harness_register_model_sources(register: Register) -> None:
    """Register model sources, chosen by the prefix of ``source = "NAME:ref"``.

    :param register: call with a name (the prefix) and a subclass of
        :class:`harness.ModelSource`.
    """


@hookspec
def harness_register_rewards(register: Register) -> None:
    """Register reward functions that RL tuners (GRPO, PPO) optimise.

    :param register: call with a name (used as ``reward`` in a tuner's options)
        and a subclass of :class:`harness.Reward`.
    """


@hookspec
def harness_register_transforms(register: Register) -> None:
    """Register transforms that make variants of variants without training
    (interpolation, merges, quantisation).

    :param register: call with a name (used as ``kind`` in ``[[transforms]]``) and a
        subclass of :class:`harness.Transform`.
    """


# -- lifecycle ------------------------------------------------------------------


@hookspec
def harness_run_started(run: RunInfo) -> None:
    """A run has been planned and is about to execute its pending cells.

    :param run: the run id, suite, store path and the planned cells.
    """


@hookspec
def harness_cell_started(cell: CellPlan) -> None:
    """A cell (model x variant x evaluator) is about to be evaluated.

    :param cell: the cell's key and names.
    """


@hookspec
def harness_cell_finished(cell: CellPlan, outcome: CellOutcome) -> None:
    """A cell finished, successfully or not, and its rows are in the store.

    :param cell: the cell's key and names.
    :param outcome: status (``done`` or ``failed``), metrics, error text.
    """


@hookspec
def harness_drift_alert(cell: CellPlan, alert: Alert) -> None:
    """A cell's metric crossed its threshold (a drift monitor fired); the alert is stored.

    Called after :func:`harness_cell_finished`, once per alert, on the driver.

    :param cell: the cell whose result raised the alert (model, variant, evaluator).
    :param alert: ``metric``, ``value``, ``threshold`` and a one-line ``message``.
    """


@hookspec
def harness_run_finished(run: RunInfo, summary: RunSummary) -> None:
    """A run ended; every cell has been written.

    :param run: as for :func:`harness_run_started`.
    :param summary: counts of done, failed and cached cells, seconds.
    """


REGISTRATION_HOOKS: dict[str, str] = {
    "tuner": "harness_register_tuners",
    "evaluator": "harness_register_evaluators",
    "reporter": "harness_register_reporters",
    "backend": "harness_register_backends",
    "executor": "harness_register_executors",
    "model_source": "harness_register_model_sources",
    "reward": "harness_register_rewards",
    "transform": "harness_register_transforms",
}
