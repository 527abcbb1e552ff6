"""Runs every unit in this process, one after another."""

from __future__ import annotations

import harness


class LocalExecutor(harness.Executor):
    def run(self, units, work, emit) -> None:
        for unit in units:
            work(unit, emit)


@harness.hookimpl
def harness_register_executors(register):
    register("local", LocalExecutor)
