"""The DuckDB store: schema and migrations (``schema``), the rows a run writes (``rows``),
typed writes (``store``), opening and locking (``connection``), read-only access for
everyone else (``reader``)."""

from harness.store.connection import connect, lock_timeout_from_env, run_lock
from harness.store.reader import QUERY_CONFIG, export_parquet, query, read_store
from harness.store.rows import (
    CellRow,
    ContaminationRow,
    ModelRow,
    PairedTestRow,
    RunRow,
    VariantRow,
)
from harness.store.schema import MIGRATIONS, SCHEMA_VERSION, VIEW_NAMES
from harness.store.store import Store

__all__ = [
    "MIGRATIONS", "QUERY_CONFIG", "SCHEMA_VERSION", "VIEW_NAMES", "CellRow", "ContaminationRow",
    "ModelRow", "PairedTestRow", "RunRow", "Store", "VariantRow", "connect", "export_parquet",
    "lock_timeout_from_env", "query", "read_store", "run_lock",
]
