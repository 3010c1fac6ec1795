"""Multi-row INSERT from plain values, for the hot paths.

Piccolo's insert builds a Table instance and converts every value per row (about 60-90 µs a row here);
this builds one parameterised statement (about 12 µs a row). Values are passed as they are: the SQLite
driver adapts UUIDs and datetimes through the adapters Piccolo registers, asyncpg handles them natively,
and JSON columns receive already-encoded text on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from piccolo.columns import Column
from piccolo.querystring import QueryString
from piccolo.table import Table

__all__ = ["insert_rows"]


async def insert_rows(
    table: type[Table],
    columns: Sequence[Column],
    rows: Sequence[Sequence[Any]],
    *,
    suffix: str = "",
) -> list[dict[str, Any]]:
    """Insert ``rows`` (values in ``columns`` order) in one statement; ``suffix`` is appended verbatim
    (a fixed ``ON CONFLICT ... RETURNING ...`` clause, never user input). Returns the driver's rows."""
    if not rows:
        return []
    names = ", ".join(f'"{column._meta.db_column_name}"' for column in columns)
    placeholder = "(" + ", ".join(["{}"] * len(columns)) + ")"
    values = [value for row in rows for value in row]
    tuples = ", ".join([placeholder] * len(rows))
    # Identifiers come from table metadata and values are bound parameters: nothing here is user input.
    sql = f'INSERT INTO "{table._meta.tablename}" ({names}) VALUES {tuples} {suffix}'  # noqa: S608
    return await table._meta.db.run_querystring(QueryString(sql.strip(), *values))
