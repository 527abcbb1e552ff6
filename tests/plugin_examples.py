"""Small plugins the tests register (as an entry point target, or directly)."""

from __future__ import annotations

import harness


class ExtraTuner(harness.Tuner):
    def tune(self, job):
        raise RuntimeError("never run in these tests")

    @staticmethod
    @harness.hookimpl
    def harness_register_tuners(register):
        register("acme/extra", ExtraTuner)


class MisspelledHook:
    """Implements a hook that does not exist (a typo of harness_register_tuners)."""

    @staticmethod
    @harness.hookimpl
    def harness_register_tunres(register):
        register("never", MisspelledHook)


class HalfTuner(harness.Tuner):
    """Subclasses the contract but forgets ``tune``."""


class NotATuner:
    """Has a ``tune`` but does not subclass harness.Tuner."""

    def tune(self, job):
        return None


class BrokenContracts:
    """Registers two classes that do not satisfy the tuner contract, and one that does."""

    @staticmethod
    @harness.hookimpl
    def harness_register_tuners(register):
        register("acme/half", HalfTuner)
        register("acme/duck", NotATuner)
        register("acme/extra", ExtraTuner)
