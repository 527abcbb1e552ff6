"""An example harness plugin: the ``example/json-match`` evaluator and ``example/csv`` reporter."""

__version__ = "0.1.0"
