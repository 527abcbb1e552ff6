"""Contamination: which evaluation items leaked into tuning data, and which ones a
variant suddenly knows.

Data side, per tuning dataset and evaluation item:

* ``exact``: the item's text, normalised, equals a text field of a tuning row (or a
  whole row), normalised the same way;
* ``ngram-<n>``: the share of the item's word n-grams (13 by default, as in lm-eval's
  decontamination and the GPT-3 report) found anywhere in the tuning data. An item
  shorter than n words counts as one n-gram of its own length. Flagged when the share
  is above ``min_overlap`` (0: any n-gram, the GPT-3 rule).

Normalisation follows lm-eval's ``decontamination.janitor``: lower case, punctuation
deleted, split on whitespace. (The janitor module itself prints a warning on import
when its C++ helper is missing, so the three lines are repeated here.)

The n-gram index is hand-written because no dependency offers one that fits: every
tuning word gets an integer id, rows are joined with a separator id, and each window
of n ids is hashed with a polynomial rolling hash in numpy (uint64 arithmetic wraps,
which is the modulus). The sorted unique hashes answer "is this n-gram in the data?"
with a binary search, so a hundred-thousand-row dataset is indexed in seconds
(``bench/contamination_index.py``).

Model side, per item and variant: Min-K% (Shi et al., 2024: the mean of the k% lowest
token log-probabilities) and Min-K%++ (Zhang et al., 2025: the same over each token's
log-probability standardised by the mean and standard deviation of the log-probability
under the model's next-token distribution), under the base and under the variant. The
change from base to variant is the score; each method flags an item whose rise is an
outlier among the evaluator's items (above the median rise by ``z`` robust standard
deviations, 1.4826 x the median absolute deviation): the tuning taught that item, beyond
what it taught the task as a whole.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.analysis.items import Item

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # a large odd number (the golden ratio's bits)
_SEPARATOR = 0  # the id between rows and fields: no n-gram crosses it


def normalise(text: str) -> list[str]:
    """Words of ``text`` as lm-eval's decontamination sees them."""
    return text.translate(_PUNCTUATION).lower().split()


def row_texts(value: Any) -> list[str]:
    """Every string inside a JSON row (prompt, completion, messages' contents, chosen, ...),
    so that any tuning format can be searched without knowing its fields."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in row_texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in row_texts(item)]
    return []


def read_tuning_texts(path: Path) -> list[list[str]]:
    """The string fields of each row of a JSONL tuning file (already validated)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(row_texts(json.loads(line)))
    return rows


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Hash of every window of ``n`` consecutive ids that holds no separator."""
    if len(ids) < n:
        return np.empty(0, dtype=np.uint64)
    count = len(ids) - n + 1
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n):
            hashes = hashes * _MULTIPLIER + ids[offset : offset + count].astype(np.uint64)
    separators = np.concatenate([[0], np.cumsum(ids == _SEPARATOR)])
    clean = separators[n : n + count] - separators[:count] == 0
    return hashes[clean]


class NgramIndex:
    """Tuning texts, indexed for exact matches and n-gram lookups."""

    def __init__(self, rows: Iterable[Sequence[str]]) -> None:
        self.vocabulary: dict[str, int] = {}
        self.exact: set[str] = set()
        ids: list[int] = []
        for fields in rows:
            row_words = []
            for text in fields:
                words = normalise(text)
                if not words:
                    continue
                self.exact.add(" ".join(words))
                row_words.extend(words)
                ids.extend(self._id(word) for word in words)
                ids.append(_SEPARATOR)
            if row_words:
                self.exact.add(" ".join(row_words))
        self.ids = np.asarray(ids, dtype=np.int64)
        self._tables: dict[int, np.ndarray] = {}

    def _id(self, word: str) -> int:
        return self.vocabulary.setdefault(word, len(self.vocabulary) + 1)

    def _table(self, n: int) -> np.ndarray:
        """Sorted unique hashes of the data's n-grams (built on first use per n)."""
        if n not in self._tables:
            # sort, then drop repeats: numpy 2.4's np.unique took 80 times longer here
            hashes = np.sort(_window_hashes(self.ids, n))
            keep = np.ones(len(hashes), dtype=bool)
            np.not_equal(hashes[1:], hashes[:-1], out=keep[1:])
            self._tables[n] = hashes[keep]
        return self._tables[n]

    def overlap(self, words: Sequence[str], n: int) -> tuple[int, int]:
        """(n-grams of ``words`` found in the data, n-grams of ``words``)."""
        if not words:
            return 0, 0
        size = min(n, len(words))
        # a word the data never uses gets an id no data window holds
        unknown = len(self.vocabulary) + 1
        ids = np.asarray([self.vocabulary.get(w, unknown) for w in words], dtype=np.int64)
        hashes = _window_hashes(ids, size)
        table = self._table(size)
        if len(table) == 0:
            return 0, len(hashes)
        positions = np.minimum(np.searchsorted(table, hashes), len(table) - 1)
        return int((table[positions] == hashes).sum()), len(hashes)


def data_side(items: Sequence[Item], index: NgramIndex, n: int,
              min_overlap: float) -> list[dict[str, Any]]:
    """An ``exact`` and an ``ngram-<n>`` finding per item."""
    findings = []
    for item in items:
        words = normalise(item.text)
        exact = bool(words) and " ".join(words) in index.exact
        found, total = index.overlap(words, n)
        share = found / total if total else 0.0
        findings.append({"item": item, "method": "exact", "score": float(exact),
                         "flagged": exact, "detail": {}})
        findings.append({"item": item, "method": f"ngram-{n}", "score": share,
                         "flagged": found > 0 and share > min_overlap,
                         "detail": {"ngrams": total, "found": found,
                                    "n": min(n, len(words)) if words else n}})
    return findings


# -- model side ---------------------------------------------------------------------------


def min_k(values: Sequence[float], k: float) -> float:
    """Mean of the lowest ``k`` share of ``values`` (at least one)."""
    if not values:
        return math.nan
    count = max(1, int(len(values) * k))
    return float(np.mean(np.sort(np.asarray(values, dtype=np.float64))[:count]))


def membership_scores(logprobs: Sequence[float], means: Sequence[float],
                      stds: Sequence[float], k: float) -> tuple[float, float]:
    """(Min-K%, Min-K%++) of one text from its tokens' log-probabilities and the mean and
    standard deviation of the log-probability under each position's distribution."""
    values = np.asarray(logprobs, dtype=np.float64)
    standardised = (values - np.asarray(means)) / np.maximum(np.asarray(stds), 1e-8)
    return min_k(values.tolist(), k), min_k(standardised.tolist(), k)


def outliers(values: Sequence[float], z: float) -> list[bool]:
    """Which values lie above the median by more than ``z`` robust standard deviations."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 3:
        return [False] * len(array)
    median = float(np.median(array))
    spread = 1.4826 * float(np.median(np.abs(array - median)))
    if spread == 0:
        spread = float(np.std(array)) or 1e-12
    return [bool(v > 0 and v - median > z * spread) for v in array]
