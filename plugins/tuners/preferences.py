"""What the preference tuners (DPO and ORPO) share: naming the data line of a row trl drops."""

from __future__ import annotations

from pathlib import Path

from harness import DataError, TuneJob


def data_lines(path: Path) -> list[int]:
    """The line number of every row of a JSONL file, counted as harness.read_jsonl counts."""
    return [number for number, line in enumerate(path.read_bytes().split(b"\n"), start=1)
            if line.strip()]


def prompt_fills_max_length(job: TuneJob, line: int, max_length: int) -> DataError:
    return DataError(job.data, line,
                     f"the prompt fills max_length={max_length} tokens and leaves none for the "
                     "answer; raise max_length or shorten the prompt", field="prompt")
