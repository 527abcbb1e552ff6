"""Runs each unit (one base model and its pending work) as a Ray task, anywhere in a cluster.

Workers stream their events (cell finished, tuning step, ...) through a Ray queue to the
driver, which records them as they come and stays the only process that writes the store.
A worker that dies fails only the cells it had not finished; running the suite again
resumes them. Paths (the model, tuned adapters, the store's variant folder) must be
visible to every worker: one machine, or a shared file system across machines.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

import harness
from harness import CellFinished, fail_cells, first_line


class RayOptions(harness.Options):
    address: str | None = Field(
        default=None, description="cluster to join ('auto', 'ray://host:10001'); default: "
                                  "the Ray already started in this process, else a local one")
    num_cpus: float = Field(default=1, gt=0, description="CPUs each unit's task reserves")
    num_gpus: float = Field(default=0, ge=0, description="GPUs each unit's task reserves")
    memory_mb: int | None = Field(default=None, gt=0,
                                  description="memory each unit's task reserves")


def _run_remote(unit: Any, work: Any, queue: Any) -> None:
    work(unit, queue.put)


class RayExecutor(harness.Executor):
    Options = RayOptions
    #: Python packages this executor imports, with how to install them (checked when a
    #: suite is validated)
    needs_packages = {"ray": "pip install 'tune-harness[ray]'"}

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()

    def run(self, units, work, emit) -> None:
        import ray
        from ray.util.queue import Queue

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.options.address, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        try:
            queue = Queue()
            task = ray.remote(_run_remote).options(
                num_cpus=self.options.num_cpus, num_gpus=self.options.num_gpus,
                memory=self.options.memory_mb * 2**20 if self.options.memory_mb else None,
                max_retries=0)
            running = {task.remote(unit, work, queue): unit for unit in units}
            finished: set[str] = set()

            def drain() -> None:
                while not queue.empty():
                    event = queue.get()
                    if isinstance(event, CellFinished):
                        finished.add(event.cell.key)
                    emit(event)

            while running:
                done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
                drain()
                for ref in done:
                    unit = running.pop(ref)
                    try:
                        ray.get(ref)
                    except Exception as exc:  # the worker died or its task failed outright
                        drain()
                        error = f"ray worker for {unit.model.name!r} failed: " \
                                f"{type(exc).__name__}: {first_line(exc)}"
                        fail_cells([c for c in unit.cells if c.key not in finished], error,
                                   str(exc), emit)
            drain()
        finally:
            if started_here:
                ray.shutdown()


@harness.hookimpl
def harness_register_executors(register):
    register("ray", RayExecutor)
