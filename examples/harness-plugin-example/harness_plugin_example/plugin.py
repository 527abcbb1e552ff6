"""The plugin module named by the entry point: one hook implementation per component kind."""

import harness


@harness.hookimpl
def harness_register_evaluators(register):
    from harness_plugin_example.json_match import JsonMatchEvaluator

    register("example/json-match", JsonMatchEvaluator)


@harness.hookimpl
def harness_register_reporters(register):
    from harness_plugin_example.csv_report import CsvReporter

    register("example/csv", CsvReporter)
