"""PPO on SmolLM2-135M: seconds per update, peak memory, and what each update did.

    python bench/ppo_cost.py [--updates 4] [--reward length|model] [--kl-coef 0.05]
                             [--tuner-file FILE] [--python PYTHON]
                             [--out bench/results/ppo_cost.json]

One PPO run in a fresh process (so that peak memory is its own) on the alignment
suite's data: with ``--reward length`` the 40 prompts of
``suites/data/alignment/prompts.jsonl`` scored by the ``length`` reward (12 words);
with ``--reward model`` a reward model first trained for 8 steps on the 60 pairs of
``preferences.jsonl``, whose prompts PPO then uses. Settings: float32, LoRA ``r = 8``
on all linear layers, 8 rollouts per update, at most 48 completion tokens,
``num_ppo_epochs = 4``, one mini-batch. Seconds per update leave out the first update
(kernel and allocator warm-up); the per-update mean reward (``objective/scores``) and KL
to the reference (``objective/kl``) come from ``rl_log.json``.

``--tuner-file`` loads ``PPOTuner`` from another file instead of the built-in one, and
``--python`` runs the worker with another interpreter. The trl-based PPO this project
shipped before its own was measured that way, in a virtual environment holding
trl 1.12 (its last release with PPO):

    git show b459332:plugins/tuners/ppo.py > /tmp/ppo_trl112.py
    python -m venv --system-site-packages /tmp/trl112 && /tmp/trl112/bin/pip install --no-deps trl==1.12.0
    python bench/ppo_cost.py --tuner-file /tmp/ppo_trl112.py --python /tmp/trl112/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "suites" / "data" / "alignment"

WORKER = r"""
import importlib.util, json, sys, time
from pathlib import Path
from transformers import set_seed
from harness import ResolvedModel, TuneJob
from harness.plugins import PluginHost
from harness_plugins.sources.builtin import builtin_model_path

updates, reward, kl_coef, tuner_file, data, out = sys.argv[1:7]
host = PluginHost.load(entry_points=False)
if tuner_file:
    spec = importlib.util.spec_from_file_location("ppo_under_test", tuner_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the options' annotations there
    spec.loader.exec_module(module)
    tuner_class = module.PPOTuner
else:
    tuner_class = host.component("tuner", "ppo").cls
path = builtin_model_path("smollm2-135m-instruct")
model = ResolvedModel("smollm2", "builtin:smollm2-135m-instruct", path, "bench")
options = dict(steps=int(updates), batch_size=8, max_completion_length=48, num_ppo_epochs=4,
               num_mini_batches=1, r=8, alpha=16, max_length=256, kl_coef=float(kl_coef))
if reward == "length":
    options.update(reward="length", reward_options={"target_words": 12})
else:
    options.update(reward_model_steps=8)
stamps = []
job = TuneJob(model, "ppo", Path(data), Path(out), seed=0,
              rewards={name: host.component("reward", name).cls
                       for name in ("length", "reward-model")},
              on_step=lambda s, t, l: stamps.append(time.perf_counter()))
set_seed(0)
started = time.perf_counter()
result = tuner_class(tuner_class.Options(**options)).tune(job)
log = json.loads((Path(out) / "rl_log.json").read_text())
per_update = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None
print(json.dumps({
    "updates": int(updates), "reward": reward, "kl_coef": float(kl_coef),
    "seconds_per_update": per_update, "first_update_done_after": stamps[0] - started,
    "seconds": time.perf_counter() - started, "peak_memory_mb": result.record.peak_memory_mb,
    "trainable_params": result.record.trainable_params,
    "total_params": result.record.total_params,
    "scores": [step.get("objective/scores") for step in log["steps"]],
    "kl": [step.get("objective/kl") for step in log["steps"]],
    "reward_model_pair_accuracy": log.get("reward_model_pair_accuracy"),
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--reward", choices=["length", "model"], default="length")
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--tuner-file", type=Path, default=None)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ppo_cost.json")
    args = parser.parse_args()
    data = DATA / ("prompts.jsonl" if args.reward == "length" else "preferences.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [args.python, "-c", WORKER, str(args.updates), args.reward, str(args.kl_coef),
             str(args.tuner_file or ""), str(data), tmp],
            capture_output=True, text=True, cwd=tmp)
    if done.returncode:
        sys.exit(f"ppo_cost: the worker failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    versions = subprocess.run(
        [args.python, "-c", "import json, torch, transformers, peft, trl; print(json.dumps("
         "{m.__name__: m.__version__ for m in (torch, transformers, peft, trl)}))"],
        capture_output=True, text=True, check=True).stdout
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average": os.getloadavg(), "tuner": str(args.tuner_file or "built-in ppo"),
              "versions": json.loads(versions), **result}
    print(json.dumps(report, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
