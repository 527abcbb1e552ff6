"""The DuckDB store: schema and migrations (``schema``), the rows a run writes (``rows``),
typed writes (``store``), opening and locking (``connection``), read-only access for
everyone else (``reader``)."""

from harness.store.connection import connect, lock_timeout_from_env, run_lock
from harness.store.reader import QUERY_CONFIG, export_parquet, query, read_store
from harness.store.rows import (
    CellRow,
    ContaminationRow,
    GateRow,
    ModelRow,
    PairedTestRow,
    RecipeTestRow,
    RunRow,
    VariantRow,
)
from harness.store.schema import MIGRATIONS, SCHEMA_VERSION
from harness.store.store import Store
from harness.store.views import VIEW_NAMES

__all__ = [
    "MIGRATIONS", "QUERY_CONFIG", "SCHEMA_VERSION", "VIEW_NAMES", "CellRow", "ContaminationRow",
    "GateRow", "ModelRow", "PairedTestRow", "RecipeTestRow", "RunRow", "Store", "VariantRow", "connect", "export_parquet",
    "lock_timeout_from_env", "query", "read_store", "run_lock",
]
