"""Peak memory of a suite with K LoRA variants of one base (the base must be held once).

    python bench/variant_memory.py [--variants 1,4] [--steps 20] [--out FILE]

For each K, writes a suite under a temporary folder: SmolLM2-135M-Instruct with K LoRA
variants (ranks 4, 8, 16, 32, ...) trained on the quickstart's SFT data, each scored with
the quickstart's capitals benchmark and general-text perplexity, and runs `harness run` on it
in a fresh process under /usr/bin/time, which reports the process's peak resident set.
If the base were loaded once per variant, the peak would grow by the model's size
(about 540 MB in float32) per variant.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smollm2_suite import lora_tuner, suite_text  # bench/smollm2_suite.py

REPO = Path(__file__).resolve().parents[1]


def variants_suite(variants: int, steps: int, store: Path) -> str:
    tuners = "".join(lora_tuner(f"lora-r{4 * 2 ** i}", 4 * 2 ** i, steps) for i in range(variants))
    return suite_text(f"variants-{variants}", store, tuners)


def measure(variants: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "suite.toml"
        suite.write_text(variants_suite(variants, steps, Path(tmp) / "store.duckdb"))
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "harness", "run",
                               str(suite)], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(done.stdout + done.stderr)
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    return {"variants": variants, "cells": (variants + 1) * 2, "seconds": round(seconds, 1),
            "peak_rss_mib": round(peak_kb / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="1,4")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "variant_memory.json")
    args = parser.parse_args()
    rows = []
    for k in (int(v) for v in args.variants.split(",")):
        rows.append(measure(k, args.steps))
        print(json.dumps(rows[-1]), flush=True)
    import torch
    import transformers

    report = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "steps": args.steps, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
