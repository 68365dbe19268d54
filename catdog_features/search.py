"""Hyperopt TPE sweeps over :class:`~catdog_features.heads.DenseHead` settings and backbone subsets.

:func:`sweep` minimises the validation log loss of a dense head on cached feature vectors,
searching its hyperparameters *and* which backbones to concatenate. It is built to run
overnight and be killed at any moment:

- every finished trial is committed to a SQLite trials file before the next one starts
  (see :class:`TrialStore` for why SQLite);
- running the same call again loads the committed trials, rebuilds hyperopt's ``Trials``
  from them and continues with *new* suggestions until ``max_evals`` trials exist;
- a trial that raises or gives a non-finite loss is recorded as ``"fail"`` with its error
  and hyperopt is told ``STATUS_FAIL``; the sweep goes on.

Suggestions are drawn one at a time with ``tpe.suggest`` (not ``fmin``), each seeded from
``(random_state, tid)``: trial ``tid`` always gets the same seed whether or not the run was
interrupted before it, so a resumed run never replays the random draws of trials it already
has, TPE's random start-up phase counts the trials already done, and an interrupted +
resumed sweep makes the same suggestions as an uninterrupted one.
"""

from __future__ import annotations

import collections
import datetime as _dt
import hashlib
import itertools
import json
import math
import os
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: Trials file format tag stored in the meta table.
FORMAT = "catdog-features-sweep/1"
#: Up to this many backbones, the subset choice enumerates every non-empty subset in one
#: ``hp.choice``; beyond it (2**7 - 1 = 127 options get sparse for TPE) each backbone gets
#: its own in/out switch.
MAX_ENUMERATED_BACKBONES = 6
#: Bytes of concatenated feature matrices kept in memory between trials (at least one is kept).
CONCAT_CACHE_BYTES = 2 * 1024**3
#: Hyperopt's own default number of random trials before TPE modelling starts.
DEFAULT_N_STARTUP_JOBS = 20
#: The key of a search space that chooses the backbones (every other key is a DenseHead parameter).
BACKBONES_KEY = "backbones"
#: Parameters shown in progress lines and tables when no searched key is known.
_DEFAULT_SHOWN = ("lr", "decay", "momentum", "dropout")


# --------------------------------------------------------------------------------------
# search spaces
# --------------------------------------------------------------------------------------
def backbone_space(backbones: Sequence[str]):
    """Hyperopt expression choosing a non-empty subset of ``backbones``.

    Up to :data:`MAX_ENUMERATED_BACKBONES` names: one ``hp.choice("backbones", ...)`` over every
    non-empty subset as a tuple, in a stable order (by size, then in the order given), so
    TPE learns directly which combinations work. With more names: a dict
    ``{name: hp.choice("use_<name>", [True, False])}``; a draw with every switch off falls
    back to the single backbone with the best loss among the trials so far (the first name
    before any single-backbone trial succeeded).
    """
    from hyperopt import hp

    names = list(dict.fromkeys(backbones))
    if not names:
        raise ValueError("Received no backbones; expected at least one name.")
    if len(names) <= MAX_ENUMERATED_BACKBONES:
        subsets = [c for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]
        return hp.choice(BACKBONES_KEY, subsets)
    return {name: hp.choice(f"use_{name}", [True, False]) for name in names}


def default_space(backbones: Sequence[str] = (), search_backbones: bool = True) -> Dict[str, Any]:
    """The reference recipe's search space, plus the backbone subset.

    ``lr`` loguniform(0.001, 0.01), ``decay`` uniform(0.0005, 0.05), ``momentum`` choice of
    0.5 / 0.8 / 0.9, ``dropout`` choice of 0.1 / 0.2 / 0.3 / 0.5, SGD, up to 200 epochs with
    early-stopping patience 8. With two or more ``backbones`` and ``search_backbones``, the
    ``"backbones"`` key is :func:`backbone_space`; otherwise all of them are used together.

    Parameters
    ----------
    backbones : sequence of str
        Backbone names available (empty for a plain feature matrix).
    search_backbones : bool
        Whether the subset of backbones is searched.

    Returns
    -------
    dict
        DenseHead parameter name -> hyperopt expression or constant, plus ``"backbones"``.
    """
    from hyperopt import hp

    space: Dict[str, Any] = {
        "lr": hp.loguniform("lr", math.log(0.001), math.log(0.01)),
        "decay": hp.uniform("decay", 0.0005, 0.05),
        "momentum": hp.choice("momentum", [0.5, 0.8, 0.9]),
        "dropout": hp.choice("dropout", [0.1, 0.2, 0.3, 0.5]),
        "optimizer": "sgd",
        "epochs": 200,
        "patience": 8,
    }
    names = list(dict.fromkeys(backbones))
    if names:
        space[BACKBONES_KEY] = backbone_space(names) if search_backbones and len(names) >= 2 else tuple(names)
    return space


def describe_space(space: Mapping[str, Any]) -> Dict[str, str]:
    """One line per key describing a space (hyperopt graph or constant); used as its fingerprint."""
    from hyperopt import pyll

    out = {}
    for key in sorted(space):
        text = str(pyll.as_apply(space[key]))
        # pyll numbers each line and indents by depth; keep the tokens, drop the layout
        tokens = [line.split(None, 1)[1] if len(line.split(None, 1)) == 2 else line for line in text.splitlines()]
        out[str(key)] = " ".join(t.strip() for t in tokens)
    return out


def _searched_keys(space: Mapping[str, Any]) -> List[str]:
    """Keys of ``space`` whose value involves a hyperopt parameter."""
    from hyperopt import pyll

    keys = []
    for key, value in space.items():
        nodes = pyll.dfs(pyll.as_apply(value))
        if any(node.name == "hyperopt_param" for node in nodes):
            keys.append(key)
    return keys


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
@dataclass
class _SweepData:
    """Feature blocks, encoded labels and a description used to fingerprint them."""

    blocks: Dict[str, np.ndarray]  # backbone name -> (n, d); {"": X} for a plain matrix
    names: List[str]  # backbone names in order ([] for a plain matrix)
    y: np.ndarray  # int labels 0..k-1
    classes: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.y)

    def describe(self) -> Dict[str, Any]:
        """Backbones and dims, rows, classes, a hash of the labels and of a sample of rows.

        Hashing every feature would cost seconds on large caches; a fixed sample of rows
        (plus shapes and all labels) is enough to notice different data.
        """
        rows = np.unique(np.linspace(0, self.n_rows - 1, num=min(self.n_rows, 64)).astype(np.int64))
        h = hashlib.sha256()
        for name in sorted(self.blocks):
            block = self.blocks[name]
            h.update(f"{name}:{block.shape}:{block.dtype}".encode())
            h.update(np.ascontiguousarray(block[rows]).tobytes())
        return {
            "backbones": {name: int(self.blocks[name].shape[1]) for name in self.names}
            if self.names
            else {"<array>": int(self.blocks[""].shape[1])},
            "n_rows": int(self.n_rows),
            "classes": [str(c) for c in self.classes],
            "labels_sha256": hashlib.sha256(np.ascontiguousarray(self.y, dtype=np.int64).tobytes()).hexdigest(),
            "features_sample_sha256": h.hexdigest(),
        }


def _as_2d(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"Feature matrix must be 2-D. Received: {name} with shape {x.shape}; expected (n_samples, n_features).")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"Feature matrix must be numeric. Received: {name} with dtype {x.dtype}.")
    return x


def _prepare_data(data, y, backbones) -> _SweepData:
    from catdog_features.featureset import FeatureSet

    if isinstance(data, FeatureSet):
        blocks, labels = dict(data.features), data.labels if y is None else y
        if labels is None:
            raise ValueError("The FeatureSet has no labels (labels=None); pass y= or use a labeled image set.")
    elif isinstance(data, Mapping):
        blocks, labels = dict(data), y
    else:
        if backbones is not None:
            raise ValueError(
                f"backbones= applies to a FeatureSet or a dict of arrays. Received: backbones={backbones!r} "
                "with a plain array."
            )
        blocks, labels = {"": data}, y
    if labels is None:
        raise ValueError("Received y=None; expected labels for a dict of arrays or a plain array.")
    if not blocks:
        raise ValueError("Received no feature matrices; expected at least one backbone.")
    names = [] if "" in blocks else list(blocks)
    if backbones is not None:
        if isinstance(backbones, str):
            backbones = [b.strip() for b in backbones.split(",") if b.strip()]
        unknown = [b for b in backbones if b not in blocks]
        if unknown or not backbones:
            raise ValueError(
                f"Unknown backbones. Received: backbones={list(backbones)!r}; expected a non-empty subset of {names}."
            )
        names = list(dict.fromkeys(backbones))
        blocks = {name: blocks[name] for name in names}
    blocks = {name: _as_2d(name or "X", x) for name, x in blocks.items()}
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"y must be 1-D. Received: y with shape {labels.shape}.")
    for name, x in blocks.items():
        if len(x) != len(labels):
            raise ValueError(
                f"Features and labels have different lengths. Received: {name or 'X'} with {len(x)} rows "
                f"and y with {len(labels)}; expected the same number."
            )
    classes, y_enc = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y has a single class. Received: classes={classes.tolist()}; expected at least 2.")
    return _SweepData(blocks=blocks, names=names, y=y_enc.astype(np.int64), classes=classes)


def _plan_folds(y: np.ndarray, cv: Optional[int], validation_split: float, random_state: int):
    """Row order + validation slice bounds per fold.

    Rows are reordered once so every fold's validation rows are contiguous: validation
    matrices are then views, and the hold-out training matrix too (train rows first).
    Returns ``(order, bounds)`` with ``bounds`` a list of ``(start, stop)`` of each fold's
    validation rows in the reordered matrix.
    """
    from sklearn.model_selection import StratifiedKFold

    from catdog_features.splitting import holdout_split

    n = len(y)
    if cv is None:
        if not 0.0 < float(validation_split) < 1.0:
            raise ValueError(f"Received validation_split={validation_split!r}; expected a fraction in (0, 1).")
        train, val = holdout_split(y, validation_split, random_state)
        return np.concatenate([train, val]), [(len(train), n)]
    if isinstance(cv, bool) or int(cv) != cv or int(cv) < 2:
        raise ValueError(f"Received cv={cv!r}; expected None (hold-out) or an int >= 2 folds.")
    folds = StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=random_state)
    vals = [val for _, val in folds.split(np.zeros(n), y)]
    stops = np.cumsum([len(v) for v in vals])
    return np.concatenate(vals), [(int(b - len(v)), int(b)) for v, b in zip(vals, stops)]


class _ConcatCache:
    """LRU of concatenated (and row-reordered) feature matrices, one per backbone subset."""

    def __init__(self, data: _SweepData, order: np.ndarray, max_bytes: int = CONCAT_CACHE_BYTES):
        self.data, self.order, self.max_bytes = data, order, max_bytes
        self._items: "collections.OrderedDict[Tuple[str, ...], np.ndarray]" = collections.OrderedDict()
        self.builds = 0

    def get(self, subset: Tuple[str, ...]) -> np.ndarray:
        if subset in self._items:
            self._items.move_to_end(subset)
            return self._items[subset]
        names = subset or ("",)
        x = np.concatenate([self.data.blocks[name][self.order] for name in names], axis=1)
        self.builds += 1
        self._items[subset] = x
        while len(self._items) > 1 and sum(v.nbytes for v in self._items.values()) > self.max_bytes:
            self._items.popitem(last=False)
        return x


# --------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------
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
            raise ValueError(
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
            raise RuntimeError(
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


def _move_aside(path: Path) -> Optional[Path]:
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


def _check_meta(stored: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
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
        raise ValueError(
            f"The trials file '{path}' belongs to a different sweep; resuming would mix incomparable trials. "
            f"Differences:\n  {listed}\n"
            "Use another trials file, or pass new=True (command line: --new) to move the old file aside and start over."
        )


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
def _fmt(value) -> str:
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
        shown = [c for c in self.searched if c != BACKBONES_KEY and not c.startswith("use_")] or list(_DEFAULT_SHOWN)
        header = ["rank", "tid", "loss", "best_epoch", "backbones", *shown, "duration_s"]
        rows = [header]
        for rank, t in enumerate(self.top(k), 1):
            rows.append([
                str(rank), str(t["tid"]), f"{t['loss']:.5f}", _fmt(t["best_epoch"]), _fmt(t["backbones"]),
                *[_fmt(t["params"].get(c)) for c in shown], f"{t['duration_s']:.1f}",
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


# --------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------
def _builtin(value):
    """JSON-friendly copy: numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_builtin(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _head_class():
    # looked up at call time so tests (and users) can substitute the head class
    from catdog_features import heads

    return heads.DenseHead


def _resolve_backbones(value, names: List[str], fallback: Optional[str]) -> List[str]:
    """The backbone list a sampled ``"backbones"`` value stands for, in the data's order."""
    if not names:
        if value not in (None, (), []):
            raise ValueError(f"Received backbones={value!r} for a plain feature matrix; expected no backbone choice.")
        return []
    if value is None:
        chosen = list(names)
    elif isinstance(value, str):
        chosen = [v.strip() for v in value.replace(",", "+").split("+") if v.strip()]
    elif isinstance(value, Mapping):
        chosen = [name for name in names if value.get(name)]
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ValueError(f"Unknown backbones. Received: {unknown!r}; expected names among {names}.")
        if not chosen:
            chosen = [fallback or names[0]]
    else:
        chosen = list(value)
    unknown = [c for c in chosen if c not in names]
    if unknown or not chosen:
        raise ValueError(f"Unknown or empty backbone choice. Received: {value!r}; expected a non-empty subset of {names}.")
    return [name for name in names if name in chosen]


def _best_single(trials: List[Dict[str, Any]]) -> Optional[str]:
    singles = [t for t in trials if t["status"] == "ok" and len(t["backbones"]) == 1]
    return min(singles, key=lambda t: (t["loss"], t["tid"]))["backbones"][0] if singles else None


def _trial_doc(trials, domain, record):
    """A hyperopt trial document for a finished record (same for live and resumed trials)."""
    from hyperopt import STATUS_FAIL, STATUS_OK
    from hyperopt.base import JOB_STATE_DONE

    tid = int(record["tid"])
    stored = record["hyperopt_vals"]
    vals = {label: list(stored.get(label, [])) for label in domain.params}
    misc = {
        "tid": tid, "cmd": domain.cmd, "workdir": domain.workdir,
        "idxs": {label: [tid] if v else [] for label, v in vals.items()},
        "vals": vals,
    }
    if record["status"] == "ok":
        result = {"status": STATUS_OK, "loss": float(record["loss"])}
    else:
        result = {"status": STATUS_FAIL}  # no loss: TPE treats it as +inf, i.e. a bad region
    doc = trials.new_trial_docs([tid], [None], [result], [misc])[0]
    doc["state"] = JOB_STATE_DONE
    return doc


def _as_proba(proba, n_classes: int) -> np.ndarray:
    """float64 ``(n, n_classes)`` probabilities; rows renormalised (float32 heads sum to 1 +- 1e-7)."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim == 1 and n_classes == 2:
        proba = np.column_stack([1.0 - proba, proba])
    if proba.ndim != 2 or proba.shape[1] != n_classes:
        raise ValueError(f"predict_proba returned shape {proba.shape}; expected (n, {n_classes}).")
    return proba / proba.sum(axis=1, keepdims=True)


def _trial_seed(random_state: int, tid: int) -> int:
    """The suggestion seed of trial ``tid``: fixed per (random_state, tid), distinct across tids."""
    return int(np.random.SeedSequence([int(random_state), int(tid)]).generate_state(1)[0])


def _progress_postfix(best: Optional[Dict[str, Any]], shown: Sequence[str]) -> str:
    if best is None:
        return "best=-"
    parts = [f"best={best['loss']:.5f}"]
    if best["backbones"]:
        parts.append(f"bb={_fmt(best['backbones'])}")
    parts += [f"{k}={_fmt(best['params'].get(k))}" for k in shown if k in best["params"]]
    return " ".join(parts)


def sweep(
    data,
    y=None,
    *,
    space: Optional[Mapping[str, Any]] = None,
    max_evals: int = 100,
    trials_path=None,
    backbones: Optional[Sequence[str]] = None,
    search_backbones: bool = True,
    cv: Optional[int] = None,
    validation_split: float = 0.2,
    random_state: Optional[int] = 0,
    head_params: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    timeout: Optional[float] = None,
    new: bool = False,
    n_startup_jobs: int = DEFAULT_N_STARTUP_JOBS,
) -> SweepResult:
    """Search DenseHead hyperparameters (and backbone subsets) with Hyperopt TPE.

    Parameters
    ----------
    data : FeatureSet, dict of str -> array, or array
        Features. A FeatureSet brings its labels; a dict maps backbone name -> ``(n, d)``
        matrix (rows aligned); a plain ``(n, d)`` matrix has no backbone choice.
    y : array-like, optional
        Labels (any values; encoded once). Required unless ``data`` is a labeled FeatureSet.
    space : dict, optional
        DenseHead parameter name -> hyperopt expression or constant, plus optionally
        ``"backbones"`` (an expression over tuples/lists of names, ``"A+B"`` strings, or a
        dict ``{name: bool expression}``). Default: :func:`default_space`.
    max_evals : int
        Total number of finished trials wanted in the trials file (earlier runs count).
    trials_path : str or Path, optional
        SQLite trials file; resumed if it exists. ``None``: an in-memory sweep (not resumable).
    backbones : sequence of str, optional
        Restrict a FeatureSet / dict to these backbones.
    search_backbones : bool
        Search which subset of backbones to concatenate (needs two or more); else use all.
    cv : int, optional
        ``None``: one stratified hold-out split of ``validation_split``; an int: stratified
        k-fold CV, loss = mean fold log loss. Both seeded by ``random_state``.
    validation_split : float
        Hold-out fraction (with ``cv=None``).
    random_state : int or None
        Seeds the split, the folds, the heads (unless the space sets ``random_state``) and
        the TPE suggestions. ``None``: a random seed, stored in the trials file for resuming.
    head_params : dict, optional
        Fixed DenseHead arguments; they replace the same keys of ``space``.
    progress : bool
        Show a tqdm bar (trial n/N, best loss and its params, ETA) and a final table.
    timeout : float, optional
        Start no new trial after this many seconds (run again to continue).
    new : bool
        If ``trials_path`` exists, move it aside (``<name>.<timestamp>.bak.sqlite``) and start over.
    n_startup_jobs : int
        Random trials before TPE starts modelling (hyperopt's default 20), counting trials
        already in the file.

    Returns
    -------
    SweepResult

    Notes
    -----
    The validation fold drives the head's early stopping (restoring its best epoch) and is
    the fold scored, as in the reference recipe; the reported loss is the selected epoch's
    ``sklearn.metrics.log_loss`` on it.
    """
    from hyperopt import base, space_eval, tpe
    from sklearn.metrics import log_loss

    if int(max_evals) < 0:
        raise ValueError(f"Received max_evals={max_evals!r}; expected an int >= 0.")
    sdata = _prepare_data(data, y, backbones)
    head_cls = _head_class()
    head_param_names = set(_head_param_names(head_cls))

    # -- the space -------------------------------------------------------------------
    user_space = dict(default_space(sdata.names, search_backbones) if space is None else space)
    if not sdata.names and BACKBONES_KEY in user_space:
        raise ValueError("The space has a 'backbones' key but the data is a plain matrix; pass a FeatureSet or dict.")
    if sdata.names and (BACKBONES_KEY not in user_space or not search_backbones):
        user_space[BACKBONES_KEY] = tuple(sdata.names)
    for key, value in dict(head_params or {}).items():
        user_space[key] = value
    unknown = sorted(k for k in user_space if k != BACKBONES_KEY and k not in head_param_names)
    if unknown:
        raise ValueError(
            f"Unknown search-space keys. Received: {unknown}; expected DenseHead parameters "
            f"({', '.join(sorted(head_param_names))}) or {BACKBONES_KEY!r}."
        )
    searched = _searched_keys(user_space)

    # -- objective plan (pure): row order and folds ------------------------------------
    store, moved = None, None
    stored_meta: Dict[str, Any] = {}
    if trials_path is not None:
        trials_path = Path(trials_path)
        if new:
            moved = _move_aside(trials_path)
        store = TrialStore(trials_path)
        stored_meta = store.read_meta()
    try:
        if random_state is None:
            random_state = stored_meta.get("objective", {}).get("random_state")
            if random_state is None:
                random_state = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        random_state = int(random_state)
        # planned (and validated) before anything is written to the trials file
        order, bounds = _plan_folds(sdata.y, cv, validation_split, random_state)
        meta = {
            "format": FORMAT,
            "space": describe_space(user_space),
            "data": sdata.describe(),
            "objective": {"cv": cv, "validation_split": None if cv else float(validation_split),
                          "random_state": random_state, "loss": "log_loss"},
        }
        if store is not None:
            if stored_meta:
                _check_meta(stored_meta, meta, trials_path)
            now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            store.write_meta({**meta, "max_evals": int(max_evals), "n_startup_jobs": int(n_startup_jobs),
                              "created_at": stored_meta.get("created_at", now), "updated_at": now})
        if moved is not None and progress:
            print(f"moved the old trials file aside to {moved}", file=sys.stderr)

        y_ord = sdata.y[order]
        all_labels = np.arange(len(sdata.classes))
        concat = _ConcatCache(sdata, order)

        # -- hyperopt state rebuilt from the committed trials ----------------------------
        domain = base.Domain(lambda params: 0.0, user_space)
        records = store.load() if store is not None else []
        htrials = base.Trials()
        if records:
            htrials.insert_trial_docs([_trial_doc(htrials, domain, r) for r in records])
            htrials.refresh()
        timings = {"suggest": 0.0, "persist": 0.0, "trials": 0.0, "n_new": 0}
        shown = [k for k in searched if k in head_param_names] or [k for k in _DEFAULT_SHOWN if k in user_space]

        def run_trial(tid: int, hvals: Dict[str, List[Any]]) -> Dict[str, Any]:
            started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            t0 = time.perf_counter()
            params, chosen, best_epoch, loss, error = {}, [], None, None, None
            try:
                point = space_eval(user_space, {k: v[0] for k, v in hvals.items() if v})
                chosen = _resolve_backbones(point.pop(BACKBONES_KEY, None), sdata.names, _best_single(records))
                params = _builtin(point)
                if "random_state" in head_param_names:
                    params.setdefault("random_state", random_state)  # same data + seed -> same head
                x = concat.get(tuple(chosen))
                losses, epochs = [], []
                for start, stop in bounds:
                    x_val, y_val = x[start:stop], y_ord[start:stop]
                    if start == 0:
                        x_tr, y_tr = x[stop:], y_ord[stop:]
                    elif stop == len(x):
                        x_tr, y_tr = x[:start], y_ord[:start]
                    else:
                        x_tr = np.concatenate([x[:start], x[stop:]])
                        y_tr = np.concatenate([y_ord[:start], y_ord[stop:]])
                    head = head_cls(**params)
                    head.fit(x_tr, y_tr, validation_data=(x_val, y_val))
                    proba = _as_proba(head.predict_proba(x_val), len(all_labels))
                    fold_loss = float(log_loss(y_val, proba, labels=all_labels))
                    if not math.isfinite(fold_loss):
                        raise FloatingPointError(f"validation log loss is {fold_loss}")
                    losses.append(fold_loss)
                    if getattr(head, "best_epoch_", None) is not None:
                        epochs.append(int(head.best_epoch_))
                loss = float(np.mean(losses))
                best_epoch = int(round(float(np.mean(epochs)))) if epochs else None
            except Exception as exc:  # a failed trial is data, not the end of the sweep
                error = f"{type(exc).__name__}: {exc}"
                loss, best_epoch = None, None
            return {
                "tid": int(tid), "status": "ok" if error is None else "fail", "loss": loss,
                "params": params, "backbones": list(chosen), "best_epoch": best_epoch,
                "duration_s": float(time.perf_counter() - t0), "error": error,
                "hyperopt_vals": _builtin(hvals), "started_at": started,
            }

        bar = None
        if progress and len(records) < max_evals:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(max_evals), initial=len(records), desc="trial", unit="trial", dynamic_ncols=True)
            best_now = SweepResult.from_trials(records).best_trial
            bar.set_postfix_str(_progress_postfix(best_now, shown), refresh=True)
        t_start = time.monotonic()
        try:
            while len(records) < max_evals:
                if timeout is not None and time.monotonic() - t_start > timeout:
                    break
                tid = (max(r["tid"] for r in records) + 1) if records else 0
                t0 = time.perf_counter()
                new_docs = tpe.suggest([tid], domain, htrials, _trial_seed(random_state, tid),
                                       n_startup_jobs=int(n_startup_jobs), verbose=False)
                hvals = {label: list(v) for label, v in new_docs[0]["misc"]["vals"].items()}
                timings["suggest"] += time.perf_counter() - t0
                record = run_trial(tid, hvals)
                timings["trials"] += record["duration_s"]
                t0 = time.perf_counter()
                if store is not None:
                    store.append(record)  # committed before the next suggestion
                timings["persist"] += time.perf_counter() - t0
                records.append(record)
                htrials.insert_trial_docs([_trial_doc(htrials, domain, record)])
                htrials.refresh()
                timings["n_new"] += 1
                if bar is not None:
                    bar.update(1)
                    best_now = SweepResult.from_trials(records).best_trial
                    bar.set_postfix_str(_progress_postfix(best_now, shown), refresh=True)
        finally:
            if bar is not None:
                bar.close()
    finally:
        if store is not None:
            store.close()

    timings["concat_builds"] = concat.builds
    result = SweepResult.from_trials(records, trials_path, searched, timings)
    if progress:
        print(result.format_table())
    return result


def _head_param_names(head_cls) -> List[str]:
    import inspect

    return [
        name for name, p in inspect.signature(head_cls.__init__).parameters.items()
        if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
