"""The vLLM backend's costs and its routing decision: where log-likelihood work is faster.

    .venv-vllm/bin/python bench/vllm_routes.py [--variants 4] [--out FILE]

Runs in the environment scripts/vllm-cpu-venv makes (vLLM's CPU build), or in any
environment with vLLM and a GPU. One process, SmolLM2-135M-Instruct, float32 on a CPU
(bfloat16 on a GPU), random rank-8 LoRA adapters (each differs from the base). Timed:

* ``load``: the `vllm` backend's load (the engine and the transformers copy), and the
  `hf` backend's load;
* ``activate``: activating each adapter on the engine, the adapter-applied check included;
* ``generate``: 32 prompts x 32 new tokens, greedy, per variant: engine vs transformers;
* ``score_texts``: 64 texts of 35 to 105 tokens: ``loglikelihood = "vllm"`` (the
  engine's prompt log-probabilities, one prompt per call: see engine_logprobs) vs
  ``"hf"`` (the transformers copy), for the base and for an adapter;
* ``multiple choice``: the quickstart's `capitals` benchmark (40 items x 4 choices)
  through lm-eval, its loglikelihood requests sent each way, for the same two.

Each pair's numbers are kept beside its times (equal texts, sums of log-probabilities,
accuracy), to be compared. The default
route is the faster one; docs/benchmarks.md holds the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROMPTS = [f"Write one sentence about the number {i}." for i in range(32)]
TEXT = ("The river runs through the old town and into the sea. Bread is made from flour, "
        "water, salt and yeast. A week has seven days and a year has twelve months. ")


def _timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "vllm_routes.json"))
    args = parser.parse_args()

    import torch
    import transformers
    import vllm

    from harness import EvaluatorSpec, ResolvedModel, Variant
    from harness_plugins.backends.hf import HFBackend, HFOptions
    from harness_plugins.backends.vllm_engine import VLLMBackend, VLLMOptions
    from harness_plugins.evaluators.benchmark import BenchmarkEvaluator, BenchmarkOptions
    from harness_plugins.sources.builtin import builtin_model_path

    sys.path.insert(0, str(REPO / "tests_vllm"))
    from conftest import make_adapter

    path = builtin_model_path("smollm2-135m-instruct")
    model = ResolvedModel("smollm2", "builtin:smollm2-135m-instruct", path, "bench")
    tmp = Path(tempfile.mkdtemp(prefix="harness-vllm-bench-"))
    adapters = [make_adapter(path, tmp / f"a{i}", seed=i) for i in range(args.variants)]
    texts = [TEXT * (1 + i % 3) for i in range(64)]
    capitals = EvaluatorSpec("capitals", "benchmark", "general",
                             str(REPO / "suites" / "data" / "capitals.jsonl"), 0)
    result: dict = {"python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "vllm": vllm.__version__,
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                    else platform.processor() or "cpu"}

    engine = VLLMBackend(VLLMOptions(max_length=1024))
    _, result["load_vllm_seconds"] = _timed(lambda: engine.load(model))
    reference = HFBackend(HFOptions(max_length=1024))
    _, result["load_hf_seconds"] = _timed(lambda: reference.load(model))

    rows = []
    variants = [Variant("base", "base", model, "base")] + [
        Variant(f"a{i}", f"key-{i}", model, "adapter", a) for i, a in enumerate(adapters)]
    for variant in variants:
        _, activate = _timed(lambda: engine.activate(variant))
        reference.activate(variant)
        on_engine, engine_seconds = _timed(lambda: engine.generate(PROMPTS, 32))
        on_copy, copy_seconds = _timed(lambda: reference.generate(PROMPTS, 32))
        rows.append({"variant": variant.name, "route": engine.route()["path"],
                     "activate_seconds": activate, "generate_vllm_seconds": engine_seconds,
                     "generate_hf_seconds": copy_seconds,
                     "same_texts": sum(a == b for a, b in zip(on_engine, on_copy))})
    result["variants"] = rows

    result["loglikelihood"] = []
    for variant in variants[:2]:  # the base and an adapter
        engine.activate(variant)
        row = {"variant": variant.name}
        for route in ("vllm", "hf"):
            engine.options.loglikelihood = route  # read by the lm-eval wrapper as it answers
            scores, row[f"score_texts_{route}_seconds"] = _timed(
                lambda: engine.score_texts(texts))
            row[f"score_texts_{route}_sum"] = sum(sum(s.logprobs) for s in scores)
            evaluator = BenchmarkEvaluator(capitals, BenchmarkOptions())
            output, row[f"multiple_choice_{route}_seconds"] = _timed(
                lambda: evaluator.evaluate(engine))
            row[f"multiple_choice_{route}_acc"] = next(
                m.value for m in output.metrics if m.name == "acc")
        result["loglikelihood"].append(row)
    engine.close()
    reference.close()

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":  # vLLM starts worker processes
    main()
