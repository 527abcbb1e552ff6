"""The mlflow reporter against real MLflow (skipped only where MLflow is not installed; the
README's test command installs it): every cell's metrics and the variant's training record,
in a local MLflow store, one MLflow run per variant, nothing logged twice by a re-run."""

from __future__ import annotations

import pytest

from harness.plugins import PluginHost
from harness.runner import run_suite
from harness.store import query

from .conftest import small_suite

mlflow = pytest.importorskip("mlflow")


def test_cells_and_training_records_land_in_a_local_mlflow_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    suite = small_suite(tmp_path)
    suite.write_text(suite.read_text().replace("seed = 0", 'seed = 0\nreporters = ["mlflow"]'))
    host = PluginHost.load(entry_points=False)
    run_suite(suite, host=host, show_progress=False)

    store = tmp_path / "results" / "small.duckdb"
    client = MlflowClient(tracking_uri=(tmp_path / "results" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("small")
    runs = {r.data.tags["harness.variant"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["base", "lora-a"]

    _, metrics = query(store, "SELECT c.variant_name, c.evaluator || '/' || m.metric, m.value "
                              "FROM cells c JOIN metrics m USING (cell_key) WHERE isfinite(m.value)")
    for variant, name, value in metrics:
        assert runs[variant].data.metrics[name] == pytest.approx(value), (variant, name)

    _, [(steps, curve, seconds, peak, trainable)] = query(
        store, "SELECT steps, loss_curve, seconds, peak_memory_mb, trainable_params FROM variants")
    lora = runs["lora-a"]
    assert lora.data.metrics["train/steps"] == steps
    assert lora.data.metrics["train/seconds"] == pytest.approx(seconds)
    assert lora.data.metrics["train/peak_memory_mb"] == pytest.approx(peak)
    assert lora.data.metrics["train/trainable_params"] == trainable
    assert lora.data.params["method"] == "lora" and lora.data.params["options.r"] == "4"
    history = client.get_metric_history(lora.info.run_id, "train_loss")
    assert [h.step for h in history] == list(range(1, len(curve) + 1))
    assert [h.value for h in history] == pytest.approx(curve)

    # a re-run with nothing to do logs nothing new
    run_suite(suite, host=host, show_progress=False)
    assert len(client.search_runs([experiment.experiment_id])) == 2
    assert len(client.get_metric_history(lora.info.run_id, "train_loss")) == len(curve)
