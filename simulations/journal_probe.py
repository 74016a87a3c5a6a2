"""Cheap read-only probes of a journal another process is writing (for polling a running engine).

Full reads go through :class:`engine.journal.Journal`; these answer one number with one
SQL query on a read-only connection, and 0 while the file or its schema does not exist yet.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

__all__ = ["journal_int", "journal_max_seq", "traded_since"]


def journal_int(path: Path, sql: str, *args: object) -> int:
    """One integer from the journal at ``path``, read-only."""
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            return int(db.execute(sql, args).fetchone()[0] or 0)
    except sqlite3.OperationalError:
        return 0  # created but no schema yet


def journal_max_seq(path: Path) -> int:
    return journal_int(path, "SELECT max(seq) FROM events")


def traded_since(path: Path, after_seq: int) -> int:
    """Orders journaled after ``after_seq`` that have a fill journaled: they reached the venue and traded."""
    return journal_int(
        path,
        "SELECT count(DISTINCT client_order_id) FROM events WHERE kind = 'Fill' AND seq > ?1 AND client_order_id IN "
        "(SELECT client_order_id FROM events WHERE kind = 'OrderSubmitting' AND seq > ?1)",
        after_seq,
    )
