"""The trials file (SQLite, one committed row per finished trial): its one reader and writer.

:class:`TrialStore` reads and writes a trials file (holding its lock); :func:`read_trials`
opens one read-only (a report or a notebook while a sweep runs). Both validate every row.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sqlite3
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple


#: Trials file format tag stored in the meta table.
FORMAT = "catdog-features-sweep/1"


class SweepMismatchError(ValueError):
    """A trials file belongs to another sweep (space, data or objective differ)."""


class TrialsBusyError(RuntimeError):
    """Another sweep holds the trials file."""


class TrialsFileError(ValueError):
    """A trials file cannot be read, or holds a row that is not a valid trial."""


class TrialsWriteError(OSError):
    """A trial could not be committed (disk full, read-only folder, ...); earlier trials are safe."""


#: Largest tid a trials file may hold (hyperopt and NumPy seeds take 32-bit ints).
MAX_TID = 2**31 - 1


def _flock(path: Path):
    """An exclusive, non-blocking ``flock`` on ``path`` (fd), or :class:`TrialsBusyError`; None off POSIX."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process guard
        return None
    fd = os.open(str(path), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise TrialsBusyError(
            f"Another sweep is using the trials file '{path}'; wait for it to finish or choose another trials file."
        ) from None
    return fd


def _write_error(path: Path, what: str, exc: sqlite3.Error, committed: Optional[int]) -> TrialsWriteError:
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    cause = "the disk is full" if full else f"SQLite said: {exc}"
    safe = (f"the {committed} trial(s) committed before are safe in it" if committed is not None
            else "nothing committed before is lost")
    remedy = ("free some space (or move the trials file to another disk and pass its new path)" if full
              else "check that the folder is writable and has space")
    return TrialsWriteError(f"Could not {what} the trials file '{path}': {cause}. {safe[0].upper() + safe[1:]}; "
                            f"{remedy}, then run the same command again to continue the sweep.")


class TrialStore:
    """The trials file: SQLite, one row per finished trial, plus a meta table.

    Why SQLite: each trial is one ``INSERT`` in its own transaction, committed with
    ``synchronous=FULL`` before the next trial starts. SQLite's commit is atomic and
    durable across SIGKILL and power loss (a torn write is rolled back from the journal on
    the next open), so the file is never corrupt and never holds half a trial, and unlike
    temp-file + rename we never rewrite a file that grows with every trial. WAL mode
    appends each commit to the write-ahead log, so a notebook can read the file while a
    sweep writes it. (WAL needs a local file system, not a network share.) Rows are JSON,
    never pickle. A commit that fails (a full disk) raises :class:`TrialsWriteError`,
    naming the file; the trials committed before stay valid.

    A second sweep on the same file fails at once instead of interleaving: the store holds
    an exclusive ``flock`` on the database file for its lifetime (the kernel drops it when
    the process dies, even by SIGKILL; it does not interact with SQLite's own fcntl locks).

    Rows are validated when loaded (:func:`validate_row`): a corrupt row is a
    :class:`TrialsFileError` naming the file and the row, never a silent "best" trial.
    """

    _COLUMNS = ("tid", "status", "loss", "params", "backbones", "best_epoch", "duration_s", "error",
                "hyperopt_vals", "started_at", "fold_losses")
    _JSON = ("params", "backbones", "hyperopt_vals", "fold_losses")

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = None
        self._conn = None
        try:
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._lock_fd = _flock(self.path)
            with self._transaction():
                self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS trials (tid INTEGER PRIMARY KEY, status TEXT NOT NULL, loss REAL, "
                    "params TEXT NOT NULL, backbones TEXT NOT NULL, best_epoch INTEGER, duration_s REAL NOT NULL, "
                    "error TEXT, hyperopt_vals TEXT NOT NULL, started_at TEXT NOT NULL, fold_losses TEXT)"
                )
                if "fold_losses" not in _columns(self._conn):  # a file from before per-fold losses
                    self._conn.execute("ALTER TABLE trials ADD COLUMN fold_losses TEXT")
        except TrialsBusyError:
            self.close()
            raise
        except sqlite3.OperationalError as exc:
            self.close()
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise _write_error(self.path, "create", exc, None) from None
            raise TrialsFileError(f"Not a readable trials file. Received: trials_path='{self.path}' ({exc}); "
                                  "expected a SQLite file written by catdog_features.sweep, or a new path.") from None
        except sqlite3.DatabaseError as exc:
            self.close()
            raise TrialsFileError(
                f"Not a readable trials file. Received: trials_path='{self.path}' ({exc}); "
                "expected a SQLite file written by catdog_features.sweep, or a new path."
            ) from None

    class _Tx:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type, exc, tb):
            if exc_type is None:
                self.conn.execute("COMMIT")
            elif self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            return False

    def _transaction(self):
        return self._Tx(self._conn)

    def read_meta(self) -> Dict[str, Any]:
        return _read_meta(self._conn, self.path)

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        try:
            with self._transaction():
                self._conn.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [(key, json.dumps(value, sort_keys=True)) for key, value in meta.items()],
                )
        except sqlite3.OperationalError as exc:
            raise _write_error(self.path, "write the settings to", exc, self.count()) from None

    def count(self) -> Optional[int]:
        try:
            return int(self._conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0])
        except sqlite3.Error:
            return None

    def load(self, known_backbones: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
        """Every committed trial, by tid, validated (:func:`validate_row`)."""
        return _load_rows(self._conn, self.path, known_backbones)

    def append(self, record: Mapping[str, Any]) -> None:
        """Commit one finished trial (atomic and durable when this returns)."""
        values = [json.dumps(record.get(c), sort_keys=True) if c in self._JSON else record.get(c) for c in self._COLUMNS]
        try:
            with self._transaction():
                self._conn.execute(
                    f"INSERT INTO trials ({', '.join(self._COLUMNS)}) VALUES ({', '.join('?' * len(self._COLUMNS))})",
                    values,
                )
        except sqlite3.OperationalError as exc:
            raise _write_error(self.path, f"commit trial {record.get('tid')} to", exc, self.count()) from None

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


def _columns(conn) -> List[str]:
    return [row[1] for row in conn.execute("PRAGMA table_info(trials)")]


def _read_meta(conn, path: Path) -> Dict[str, Any]:
    out = {}
    for key, value in conn.execute("SELECT key, value FROM meta"):
        try:
            out[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError) as exc:
            raise TrialsFileError(f"The trials file '{path}' has an invalid meta entry {key!r} ({exc}).") from None
    return out


def _load_rows(conn, path: Path, known_backbones: Optional[Sequence[str]]) -> List[Dict[str, Any]]:
    present = _columns(conn)
    cols = [c for c in TrialStore._COLUMNS if c in present]
    out = []
    for rowid, *row in conn.execute(f"SELECT rowid, {', '.join(cols)} FROM trials ORDER BY tid"):
        raw = dict(zip(cols, row))
        out.append(validate_row(raw, path, rowid, known_backbones))
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_row(raw: Mapping[str, Any], path: Path, rowid: int, known_backbones: Optional[Sequence[str]] = None
                 ) -> Dict[str, Any]:
    """A trials-file row as a trial record, or :class:`TrialsFileError` naming the file, the row and the problem.

    Checks: tid an int in [0, :data:`MAX_TID`]; status "ok" (with a finite loss >= 0, log loss
    cannot be negative) or "fail"; params / hyperopt_vals JSON objects, backbones a JSON list
    of names (among ``known_backbones`` when given); best_epoch, duration and fold losses in range.
    """
    tid = raw.get("tid")

    def bad(problem: str) -> TrialsFileError:
        return TrialsFileError(
            f"The trials file '{path}' has an invalid row (rowid {rowid}, tid {tid!r}): {problem}. "
            "Delete that row (e.g. sqlite3 FILE \"DELETE FROM trials WHERE rowid = "
            f"{rowid}\"), or start a new sweep (new=True; command line: --new)."
        )

    rec = dict(raw)
    if isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid <= MAX_TID:
        raise bad(f"tid must be an integer in [0, {MAX_TID}]")
    for key in TrialStore._JSON:
        if key not in rec:
            rec[key] = None
            continue
        if rec[key] is None and key == "fold_losses":
            continue
        try:
            rec[key] = json.loads(rec[key])
        except (TypeError, ValueError) as exc:
            raise bad(f"{key} is not valid JSON ({exc})") from None
    if rec.get("status") not in ("ok", "fail"):
        raise bad(f"status {rec.get('status')!r} is neither 'ok' nor 'fail'")
    if rec["status"] == "ok" and not (_is_number(rec.get("loss")) and rec["loss"] >= 0):
        raise bad(f"an 'ok' trial needs a finite log loss >= 0; found loss={rec.get('loss')!r}")
    if rec["status"] == "fail" and rec.get("loss") is not None:
        raise bad(f"a failed trial has no loss; found loss={rec.get('loss')!r}")
    if not isinstance(rec["params"], dict):
        raise bad("params is not a JSON object")
    if not isinstance(rec["hyperopt_vals"], dict) or not all(isinstance(v, list) for v in rec["hyperopt_vals"].values()):
        raise bad("hyperopt_vals is not a JSON object of lists")
    names = rec["backbones"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("backbones is not a JSON list of names")
    if known_backbones is not None:
        unknown = [n for n in names if n not in known_backbones]
        if unknown or (rec["status"] == "ok" and bool(known_backbones) != bool(names)):
            raise bad(f"backbones {names!r} are not a subset of this sweep's {list(known_backbones)!r}")
    epoch = rec.get("best_epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise bad(f"best_epoch must be empty or an integer >= 0; found {epoch!r}")
    if not (_is_number(rec.get("duration_s")) and rec["duration_s"] >= 0):
        raise bad(f"duration_s must be a number >= 0; found {rec.get('duration_s')!r}")
    folds = rec.get("fold_losses")
    if folds is not None and not (isinstance(folds, list) and all(_is_number(v) and v >= 0 for v in folds)):
        raise bad(f"fold_losses must be empty or a list of losses >= 0; found {folds!r}")
    return rec


def read_trials(path) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """``(trials, meta)`` of a trials file, read-only: works while a sweep holds the file.

    SQLite's WAL gives a consistent snapshot of the committed trials without taking the
    sweep's lock, so a report or a notebook can read a running sweep. Rows are validated as
    by :meth:`TrialStore.load` (backbones against the meta's data description).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Trials file not found. Received: {str(path)!r}.")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise TrialsFileError(f"Not a readable trials file. Received: trials_path='{path}' ({exc}).") from None
    try:
        meta = _read_meta(conn, path)
        described = (meta.get("data") or {}).get("backbones")
        known = None if not isinstance(described, dict) else [n for n in described if n != "<array>"]
        trials = _load_rows(conn, path, known)
    except sqlite3.Error as exc:
        raise TrialsFileError(f"Not a readable trials file. Received: trials_path='{path}' ({exc}).") from None
    finally:
        conn.close()
    return trials, meta


def move_aside(path: Path) -> Optional[Path]:
    """Rename an existing trials file (and its WAL side files) to ``<stem>.<timestamp>.bak<suffix>``.

    Takes the file's lock first: while another sweep holds it, :class:`TrialsBusyError` and
    nothing is moved.
    """
    if not path.exists():
        return None
    fd = _flock(path)
    try:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = path.with_name(f"{path.stem}.{stamp}.bak{path.suffix}")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.stem}.{stamp}-{n}.bak{path.suffix}")
        for side in ("-wal", "-shm"):
            extra = Path(str(path) + side)
            if extra.exists():
                extra.rename(Path(str(target) + side))
        path.rename(target)
    finally:
        if fd is not None:
            os.close(fd)
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
