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

import datetime as _dt
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from catdog_features.search.data import ConcatCache, plan_folds, prepare_data
from catdog_features.search.space import BACKBONES_KEY, default_space, describe_space, searched_keys
from catdog_features.search.trials import (
    DEFAULT_SHOWN, FORMAT, SweepResult, TrialStore, check_meta, fmt_value, move_aside,
)

#: Hyperopt's own default number of random trials before TPE modelling starts.
DEFAULT_N_STARTUP_JOBS = 20
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


def resolve_backbones(value, names: List[str], fallback: Optional[str]) -> List[str]:
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
        parts.append(f"bb={fmt_value(best['backbones'])}")
    parts += [f"{k}={fmt_value(best['params'].get(k))}" for k in shown if k in best["params"]]
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
    sdata = prepare_data(data, y, backbones)
    from catdog_features import heads

    head_cls = heads.DenseHead  # looked up at call time
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
    searched = searched_keys(user_space)

    # -- objective plan (pure): row order and folds ------------------------------------
    store, moved = None, None
    stored_meta: Dict[str, Any] = {}
    if trials_path is not None:
        trials_path = Path(trials_path)
        if new:
            moved = move_aside(trials_path)
        store = TrialStore(trials_path)
        stored_meta = store.read_meta()
    try:
        if random_state is None:
            random_state = stored_meta.get("objective", {}).get("random_state")
            if random_state is None:
                random_state = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        random_state = int(random_state)
        # planned (and validated) before anything is written to the trials file
        order, bounds = plan_folds(sdata.y, cv, validation_split, random_state)
        meta = {
            "format": FORMAT,
            "space": describe_space(user_space),
            "data": sdata.describe(),
            "objective": {"cv": cv, "validation_split": None if cv else float(validation_split),
                          "random_state": random_state, "loss": "log_loss"},
        }
        if store is not None:
            if stored_meta:
                check_meta(stored_meta, meta, trials_path)
            now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            store.write_meta({**meta, "max_evals": int(max_evals), "n_startup_jobs": int(n_startup_jobs),
                              "created_at": stored_meta.get("created_at", now), "updated_at": now})
        if moved is not None and progress:
            print(f"moved the old trials file aside to {moved}", file=sys.stderr)

        y_ord = sdata.y[order]
        all_labels = np.arange(len(sdata.classes))
        concat = ConcatCache(sdata, order)

        # -- hyperopt state rebuilt from the committed trials ----------------------------
        domain = base.Domain(lambda params: 0.0, user_space)
        records = store.load() if store is not None else []
        htrials = base.Trials()
        if records:
            htrials.insert_trial_docs([_trial_doc(htrials, domain, r) for r in records])
            htrials.refresh()
        timings = {"suggest": 0.0, "persist": 0.0, "trials": 0.0, "n_new": 0}
        shown = [k for k in searched if k in head_param_names] or [k for k in DEFAULT_SHOWN if k in user_space]

        def run_trial(tid: int, hvals: Dict[str, List[Any]]) -> Dict[str, Any]:
            started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            t0 = time.perf_counter()
            params, chosen, best_epoch, loss, error = {}, [], None, None, None
            try:
                point = space_eval(user_space, {k: v[0] for k, v in hvals.items() if v})
                chosen = resolve_backbones(point.pop(BACKBONES_KEY, None), sdata.names, _best_single(records))
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
