"""Helpers shared by the sweep kill -9 tests."""

import sqlite3


def committed_trials(db) -> int:
    """Trials committed to the trials file ``db`` so far (0 before it or its tables exist)."""
    if not db.exists():  # connecting would create an empty file before the sweep does
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0
