"""Helpers shared by the sweep tests: reading a trials file as a test checks it."""

import sqlite3

from catdog_features import search


def committed_trials(db) -> int:
    """Trials committed to the trials file ``db`` so far (0 before it or its tables exist)."""
    if not db.exists():  # connecting would create an empty file before the sweep does
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def load_trials(db):
    """Every committed trial of ``db``, validated by :meth:`TrialStore.load`."""
    store = search.TrialStore(db)
    try:
        return store.load()
    finally:
        store.close()
