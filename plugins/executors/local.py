"""Runs every unit in this process, one after another."""

from __future__ import annotations

import harness
from harness.components import Options


class LocalExecutor:
    Options = Options

    def __init__(self, options: Options | None = None) -> None:
        self.options = options

    def run(self, units, work, emit) -> None:
        for unit in units:
            work(unit, emit)


@harness.hookimpl
def harness_register_executors(register):
    register("local", LocalExecutor)
