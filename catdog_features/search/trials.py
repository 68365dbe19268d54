"""The trials file (SQLite, one committed row per finished trial) and the sweep's result.

:class:`TrialStore` is the one reader and writer of a trials file; :func:`read_trials` opens one
read-only (a report or a notebook while a sweep runs). :class:`SweepResult` is what
:func:`~catdog_features.search.sweep` returns.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple


from catdog_features.search.space import BACKBONES_KEY

#: Trials file format tag stored in the meta table.
FORMAT = "catdog-features-sweep/1"
#: Parameters shown in progress lines and tables when no searched key is known.
DEFAULT_SHOWN = ("lr", "decay", "momentum", "dropout")


class SweepMismatchError(ValueError):
    """A trials file belongs to another sweep (space, data or objective differ)."""


class TrialsBusyError(RuntimeError):
    """Another sweep holds the trials file."""


class TrialsFileError(ValueError):
    """A trials file cannot be read, or holds a row that is not a valid trial."""


class TrialStore:
    """The trials file: SQLite, one row per finished trial, plus a meta table.

    Why SQLite: each trial is one ``INSERT`` in its own transaction, committed with
    ``synchronous=FULL`` before the next trial starts. SQLite's commit is atomic and
    durable across SIGKILL and power loss (a torn write is rolled back from the journal on
    the next open), so the file is never corrupt and never holds half a trial, and unlike
    temp-file + rename we never rewrite a file that grows with every trial. WAL mode
    appends each commit to the write-ahead log, so a notebook can read the file while a
    sweep writes it. (WAL needs a local file system, not a network share.) Rows are JSON,
    never pickle.

    A second sweep on the same file fails at once instead of interleaving: the store holds
    an exclusive ``flock`` on the database file for its lifetime (the kernel drops it when
    the process dies, even by SIGKILL; it does not interact with SQLite's own fcntl locks).
    """

    _COLUMNS = ("tid", "status", "loss", "params", "backbones", "best_epoch", "duration_s", "error",
                "hyperopt_vals", "started_at")
    _JSON = ("params", "backbones", "hyperopt_vals")

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = None
        try:
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._lock()
            with self._transaction():
                self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS trials (tid INTEGER PRIMARY KEY, status TEXT NOT NULL, loss REAL, "
                    "params TEXT NOT NULL, backbones TEXT NOT NULL, best_epoch INTEGER, duration_s REAL NOT NULL, "
                    "error TEXT, hyperopt_vals TEXT NOT NULL, started_at TEXT NOT NULL)"
                )
        except sqlite3.DatabaseError as exc:
            self.close()
            raise TrialsFileError(
                f"Not a readable trials file. Received: trials_path='{self.path}' ({exc}); "
                "expected a SQLite file written by catdog_features.sweep, or a new path."
            ) from None

    def _lock(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no cross-process guard
            return
        fd = os.open(str(self.path), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise TrialsBusyError(
                f"Another sweep is using the trials file '{self.path}'; wait for it to finish or choose "
                "another trials file."
            ) from None
        self._lock_fd = fd

    class _Tx:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type, exc, tb):
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
            return False

    def _transaction(self):
        return self._Tx(self._conn)

    def read_meta(self) -> Dict[str, Any]:
        rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(key, json.dumps(value, sort_keys=True)) for key, value in meta.items()],
            )

    def load(self) -> List[Dict[str, Any]]:
        cols = ", ".join(self._COLUMNS)
        out = []
        for row in self._conn.execute(f"SELECT {cols} FROM trials ORDER BY tid"):
            rec = dict(zip(self._COLUMNS, row))
            for key in self._JSON:
                rec[key] = json.loads(rec[key])
            out.append(rec)
        return out

    def append(self, record: Mapping[str, Any]) -> None:
        """Commit one finished trial (atomic and durable when this returns)."""
        values = [json.dumps(record[c], sort_keys=True) if c in self._JSON else record[c] for c in self._COLUMNS]
        with self._transaction():
            self._conn.execute(
                f"INSERT INTO trials ({', '.join(self._COLUMNS)}) VALUES ({', '.join('?' * len(self._COLUMNS))})",
                values,
            )

    def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
            self._conn = None
        if self._lock_fd is not None:  # after SQLite let go of the file
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read_trials(path) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """``(trials, meta)`` of a trials file, read-only: works while a sweep holds the file.

    SQLite's WAL gives a consistent snapshot of the committed trials without taking the
    sweep's lock, so a report or a notebook can read a running sweep.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Trials file not found. Received: {str(path)!r}.")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise TrialsFileError(f"Not a readable trials file. Received: trials_path='{path}' ({exc}).") from None
    try:
        cols = TrialStore._COLUMNS
        trials = []
        for row in conn.execute(f"SELECT {', '.join(cols)} FROM trials ORDER BY tid"):
            rec = dict(zip(cols, row))
            for key in TrialStore._JSON:
                rec[key] = json.loads(rec[key])
            trials.append(rec)
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.Error as exc:
        raise TrialsFileError(f"Not a readable trials file. Received: trials_path='{path}' ({exc}).") from None
    finally:
        conn.close()
    return trials, meta


def move_aside(path: Path) -> Optional[Path]:
    """Rename an existing trials file (and its WAL side files) to ``<stem>.<timestamp>.bak<suffix>``."""
    if not path.exists():
        return None
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.stem}.{stamp}.bak{path.suffix}")
    for side in ("-wal", "-shm"):
        extra = Path(str(path) + side)
        if extra.exists():
            extra.rename(Path(str(target) + side))
    path.rename(target)
    return target


def check_meta(stored: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    """Raise a ValueError naming every difference between a stored and the current sweep."""
    problems = []
    if stored.get("format") != FORMAT:
        problems.append(f"format: stored {stored.get('format')!r}, now {FORMAT!r}")
    for section in ("space", "data", "objective"):
        old, new = stored.get(section) or {}, current[section]
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                problems.append(f"{section}[{key!r}]: stored {old.get(key, '<absent>')!r}, now {new.get(key, '<absent>')!r}")
    if problems:
        listed = "\n  ".join(problems)
        raise SweepMismatchError(
            f"The trials file '{path}' belongs to a different sweep; resuming would mix incomparable trials. "
            f"Differences:\n  {listed}\n"
            "Use another trials file, or pass new=True (command line: --new) to move the old file aside and start over."
        )


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
def fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


@dataclass
class SweepResult:
    """What :func:`sweep` returns.

    Attributes
    ----------
    best_params : dict or None
        DenseHead keyword arguments of the best successful trial.
    best_backbones : list of str or None
        Backbones concatenated in the best trial (``[]`` for a plain matrix).
    best_loss : float or None
        Its validation log loss.
    best_trial : dict or None
        The whole trial record.
    trials : list of dict
        Every finished trial, by tid: ``tid, status ("ok"|"fail"), loss, params, backbones,
        best_epoch, duration_s, error, hyperopt_vals, started_at``. ``pd.DataFrame(trials)``.
    trials_path : str or None
        The SQLite trials file.
    searched : list of str
        Keys of the space that were searched (shown in tables).
    timings : dict
        Seconds spent this run: ``suggest`` (TPE), ``persist`` (commits), ``trials``; and
        counts: ``n_new`` trials run, ``concat_builds`` feature concatenations made (one per
        distinct backbone subset while the LRU holds them).
    """

    best_params: Optional[Dict[str, Any]]
    best_backbones: Optional[List[str]]
    best_loss: Optional[float]
    best_trial: Optional[Dict[str, Any]]
    trials: List[Dict[str, Any]]
    trials_path: Optional[str] = None
    searched: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_trials(cls, trials, trials_path=None, searched=(), timings=None) -> "SweepResult":
        ok = [t for t in trials if t["status"] == "ok"]
        best = min(ok, key=lambda t: (t["loss"], t["tid"])) if ok else None
        return cls(
            best_params=None if best is None else dict(best["params"]),
            best_backbones=None if best is None else list(best["backbones"]),
            best_loss=None if best is None else best["loss"],
            best_trial=best,
            trials=list(trials),
            trials_path=None if trials_path is None else str(trials_path),
            searched=list(searched),
            timings=dict(timings or {}),
        )

    @property
    def n_ok(self) -> int:
        return sum(t["status"] == "ok" for t in self.trials)

    def top(self, k: int = 5, distinct: bool = True) -> List[Dict[str, Any]]:
        """The ``k`` best successful trials, lowest loss first (ties: earlier tid).

        With ``distinct``, trials repeating the (params, backbones) of a better one are skipped.
        """
        ok = sorted((t for t in self.trials if t["status"] == "ok"), key=lambda t: (t["loss"], t["tid"]))
        out, seen = [], set()
        for t in ok:
            key = (json.dumps(t["params"], sort_keys=True), tuple(t["backbones"]))
            if distinct and key in seen:
                continue
            seen.add(key)
            out.append(t)
            if len(out) >= k:
                break
        return out

    def to_frame(self):
        """The trials as a pandas DataFrame, one ``params.<name>`` column per parameter."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "SweepResult.to_frame() needs pandas, which is not installed (pip install pandas); "
                "the plain records are in result.trials."
            ) from None
        rows = []
        for t in self.trials:
            row = {k: v for k, v in t.items() if k not in ("params", "hyperopt_vals")}
            row["backbones"] = "+".join(t["backbones"])
            row.update({f"params.{k}": v for k, v in t["params"].items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def format_table(self, k: int = 10) -> str:
        """A plain-text table of the top ``k`` distinct trials."""
        shown = [c for c in self.searched if c != BACKBONES_KEY and not c.startswith("use_")] or list(DEFAULT_SHOWN)
        header = ["rank", "tid", "loss", "best_epoch", "backbones", *shown, "duration_s"]
        rows = [header]
        for rank, t in enumerate(self.top(k), 1):
            rows.append([
                str(rank), str(t["tid"]), f"{t['loss']:.5f}", fmt_value(t["best_epoch"]), fmt_value(t["backbones"]),
                *[fmt_value(t["params"].get(c)) for c in shown], f"{t['duration_s']:.1f}",
            ])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        n_fail = len(self.trials) - self.n_ok
        title = f"top {min(k, self.n_ok)} of {len(self.trials)} trials ({n_fail} failed)"
        if self.trials_path:
            title += f"; trials file: {self.trials_path}"
        return title + "\n" + "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"SweepResult(best_loss={self.best_loss!r}, best_backbones={self.best_backbones!r}, "
            f"best_params={self.best_params!r}, n_trials={len(self.trials)}, n_ok={self.n_ok})"
        )
