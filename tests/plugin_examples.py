"""Small plugins the tests register (as an entry point target, or directly)."""

from __future__ import annotations

import harness
from harness.components import Options


class ExtraTuner:
    Options = Options

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
