"""``mlflow``: log what a run produced to MLflow (optional: ``pip install 'tune-harness[mlflow]'``).

One MLflow experiment per suite; one MLflow run per variant (the base included), found
again by its ``harness.variant_key`` tag, so later harness runs add to it. The reporter
logs what this harness run stored:

* each new cell's metrics, as ``<evaluator>/<metric>``;
* each variant tuned in this run: its tuner options as params, its training record
  (steps, final loss, seconds, tokens/s, peak memory, parameters) as metrics, and the
  loss curve as the step-indexed metric ``train_loss``.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else a local file store beside the harness
store (``<store folder>/mlruns``). MLflow 3 keeps the file store in maintenance mode and
refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; for that default local store only, the
reporter sets that switch (set ``MLFLOW_TRACKING_URI=sqlite:///...`` for a database).
"""

from __future__ import annotations

import json
import os
from typing import Any

import harness
from harness import ReportContext, UserError, query

RECORD = ("steps", "final_loss", "seconds", "train_tokens", "tokens_per_second",
          "peak_memory_mb", "trainable_params", "total_params")


class MlflowReporter(harness.Reporter):
    Options = harness.Options  # no options: the tracking URI comes from MLflow's own variable

    def report(self, context: ReportContext) -> None:
        if context.run_id is None:
            return  # nothing ran, nothing new to log
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("the mlflow reporter needs MLflow: pip install 'tune-harness[mlflow]'") \
                from None
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (context.store_path.parent / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(context.suite_name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(context.suite_name))
        runs: dict[str, str] = {}

        def mlflow_run(variant_key: str, model: str, variant: str) -> str:
            if variant_key not in runs:
                found = client.search_runs([experiment_id],
                                           f"tags.`harness.variant_key` = '{variant_key}'")
                runs[variant_key] = found[0].info.run_id if found else client.create_run(
                    experiment_id, run_name=f"{model}/{variant}",
                    tags={"harness.variant_key": variant_key, "harness.model": model,
                          "harness.variant": variant}).info.run_id
            return runs[variant_key]

        self._log_variants(context, client, mlflow_run)
        self._log_cells(context, client, mlflow_run)
        for run_id in runs.values():
            client.set_terminated(run_id)
        context.console.print(f"mlflow: logged {len(runs)} variant run(s) to {uri}")

    @staticmethod
    def _log_variants(context: ReportContext, client: Any, mlflow_run: Any) -> None:
        columns, rows = query(
            context.store_path,
            "SELECT variant_key, model_name, name, method, config, loss_curve, "
            + ", ".join(RECORD) + " FROM variants WHERE run_id = ? AND status = 'done'",
            [context.run_id])
        for row in rows:
            values = dict(zip(columns, row))
            run_id = mlflow_run(values["variant_key"], values["model_name"], values["name"])
            config = json.loads(values["config"]) if values["config"] else {}
            client.log_param(run_id, "method", values["method"])
            for name, value in (config if isinstance(config, dict) else {}).items():
                client.log_param(run_id, f"options.{name}", value)
            for name in RECORD:
                if values[name] is not None:
                    client.log_metric(run_id, f"train/{name}", float(values[name]))
            for step, loss in enumerate(values["loss_curve"] or [], start=1):
                client.log_metric(run_id, "train_loss", float(loss), step=step)

    @staticmethod
    def _log_cells(context: ReportContext, client: Any, mlflow_run: Any) -> None:
        _, rows = query(
            context.store_path,
            "SELECT c.variant_key, c.model_name, c.variant_name, c.evaluator, m.metric, m.value "
            "FROM cells c JOIN metrics m USING (cell_key) "
            "WHERE c.run_id = ? AND c.status = 'done' AND isfinite(m.value)",
            [context.run_id])
        for variant_key, model, variant, evaluator, metric, value in rows:
            client.log_metric(mlflow_run(variant_key, model, variant),
                              f"{evaluator}/{metric}", float(value))


@harness.hookimpl
def harness_register_reporters(register):
    register("mlflow", MlflowReporter)
