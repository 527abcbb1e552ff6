"""How fast the n-gram contamination index is on a hundred-thousand-row tuning set.

    python bench/contamination_index.py [--rows 100000] [--items 5000] [--planted 25] [--out FILE]

Writes a synthetic tuning set (rows of 40-120 words drawn from a 20,000-word Zipf
vocabulary, so common words repeat as in real text) and a set of evaluation items of
20-60 words, some of them planted inside tuning rows. Then times, in this process:
reading the JSONL file, building the index (the 13-gram table is built on the first
lookup), and checking every item (exact and 13-gram overlap); reports the peak resident
memory and whether exactly the planted items were flagged.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.analysis.contamination import NgramIndex, data_side, read_tuning_texts  # noqa: E402
from harness.analysis.items import Item  # noqa: E402


def vocabulary(size: int, rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(2, 9))))
    return sorted(words)


def sentence(words: list[str], weights: list[float], length: int, rng: random.Random) -> str:
    return " ".join(rng.choices(words, weights, k=length)).capitalize() + "."


def measure(rows: int, items: int, planted: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    words = vocabulary(20_000, rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf's law
    questions = [sentence(words, weights, rng.randint(20, 60), rng) for _ in range(items)]
    planted_indices = set(rng.sample(range(items), planted))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "tuning.jsonl"
        hosts = rng.sample(range(rows), planted)
        carriers = dict(zip(hosts, sorted(planted_indices)))
        with open(data, "w", encoding="utf-8") as handle:
            for row in range(rows):
                text = sentence(words, weights, rng.randint(40, 120), rng)
                if row in carriers:  # the item inside a longer answer, upper-cased
                    text = f"{text} {questions[carriers[row]].upper()} {text}"
                handle.write(json.dumps({"prompt": f"Question {row}?", "completion": text}) + "\n")
        size_mb = data.stat().st_size / 2**20
        clock = time.perf_counter()
        texts = read_tuning_texts(data)
        read_s = time.perf_counter() - clock
    clock = time.perf_counter()
    index = NgramIndex(texts)
    del texts
    build_s = time.perf_counter() - clock
    clock = time.perf_counter()
    index.overlap(["warm", "up"] * 7, 13)  # builds the 13-gram table
    table_s = time.perf_counter() - clock
    clock = time.perf_counter()
    findings = data_side([Item(i, str(i), q) for i, q in enumerate(questions)], index, 13, 0.0)
    query_s = time.perf_counter() - clock
    flagged = {f["item"].index for f in findings if f["method"] == "ngram-13" and f["flagged"]}
    return {
        "rows": rows, "file_mb": round(size_mb, 1), "words": int(len(index.ids)),
        "ngrams": int(len(index._table(13))), "items": items, "planted": planted,
        "read_seconds": round(read_s, 2), "index_seconds": round(build_s, 2),
        "table_seconds": round(table_s, 2), "query_seconds": round(query_s, 3),
        "found_planted": len(flagged & planted_indices),
        "flagged_clean": len(flagged - planted_indices),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--planted", type=int, default=25)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                        "contamination_index.json")
    args = parser.parse_args()
    result = measure(args.rows, args.items, args.planted)
    result["machine"] = {"python": platform.python_version(), "processor": platform.processor()
                         or platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
