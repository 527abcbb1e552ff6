"""`bench/gpu_tier.py --dry-run`: the GPU tier's code path on the CPU (tiny model, float32).

The GPU numbers come from a run on a CUDA machine (scripts/gpu-wheelhouse says how); here
the same script runs end to end and the JSON it writes must hold together: tokens/s
measured, MFU the stated arithmetic on the recorded numbers, the harness/lm-eval ratio
there, and both sides' metrics identical.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("gpu-tier")
    out = tmp / "gpu_tier.json"
    # HARNESS_CACHE (the session's tiny model) is inherited; the dataset cache is the test's own
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp / "datasets"), "TQDM_DISABLE": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_tier.py"), "--dry-run",
                           "--peak-tflops", "123.5", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "DRY RUN" in done.stdout
    return json.loads(out.read_text())


def test_dry_run_is_marked_and_describes_the_machine(dry_run):
    assert dry_run["dry_run"] is True
    assert "DRY RUN" in dry_run["note"]
    assert dry_run["device"]["kind"] == "cpu" and dry_run["dtype"] == "float32"
    assert dry_run["model"]["spec"] == "builtin:tiny-random"
    versions = dry_run["versions"]
    assert versions["torch"] and versions["lm_eval"] and versions["trl"] and versions["duckdb"]
    assert "cuda" in versions  # None on a CPU build of torch


def test_tune_measures_tokens_per_second_on_full_rows(dry_run):
    tune = dry_run["tune"]
    assert tune["method"] == "lora" and tune["trainer_device"] == "cpu"
    assert tune["bf16"] is False and tune["weights_dtype"] == "float32"  # the CPU: float32
    assert tune["steps"] == 6
    # every row is cut at max_length: each step trains batch x length tokens, no padding
    assert tune["tokens_per_step"] == tune["batch_size"] * tune["max_length"]
    assert tune["train_tokens"] == tune["tokens_per_step"] * tune["steps"]
    assert len(tune["step_seconds"]) == tune["steps"] - 1
    timed = tune["step_seconds"][tune["warmup_intervals_left_out"]:]
    assert tune["median_step_seconds"] == statistics.median(timed)
    assert tune["tokens_per_second"] > 0
    assert tune["tokens_per_second"] == pytest.approx(tune["tokens_per_step"]
                                                      / tune["median_step_seconds"])
    assert len(tune["loss_curve"]) == tune["steps"]
    assert all(math.isfinite(loss) for loss in tune["loss_curve"])


def test_mfu_is_four_p_tokens_per_second_over_the_given_peak(dry_run):
    tune, peak = dry_run["tune"], dry_run["peak_tflops"]
    assert peak == 123.5
    params = tune["params"]
    assert params == dry_run["model"]["params"] > 0 and tune["trainable_params"] > 0
    assert tune["flops_per_token"] == 4 * params
    assert tune["mfu"] == pytest.approx(4 * params * tune["tokens_per_second"] / (peak * 1e12),
                                        rel=1e-12)
    assert tune["mfu_overall"] == pytest.approx(
        4 * params * tune["train_tokens"] / tune["train_seconds"] / (peak * 1e12), rel=1e-12)
    assert 0 < tune["mfu"] < 1


def test_eval_ratio_and_identical_metrics(dry_run):
    ev = dry_run["eval"]
    assert ev["device"] == "cpu" and ev["dtype"] == "float32"
    medians = ev["medians"]
    assert ev["ratio"]["seconds"] == pytest.approx(medians["harness"]["seconds"]
                                                   / medians["lm_eval_light"]["seconds"])
    assert ev["ratio"]["process_seconds"] > 0
    assert set(ev["compared_metrics"]) >= {"acc", "acc_norm"}
    assert ev["metrics"]["harness"] == ev["metrics"]["lm_eval"]
    assert ev["stderrs"]["harness"] == ev["stderrs"]["lm_eval"]
    assert ev["metrics_identical"] is True
