"""Hyperopt TPE sweeps over head settings, head kinds and backbone subsets.

:func:`sweep` minimises the validation log loss of a head (dense or linear, see
:mod:`.space`) on cached feature vectors, searching its hyperparameters *and* which backbones
to concatenate. It is built to run overnight and be killed at any moment:

- every finished trial is committed to a SQLite trials file before the next one starts
  (see :class:`TrialStore` for why SQLite);
- running the same call again loads the committed trials, rebuilds hyperopt's ``Trials``
  from them and continues with *new* suggestions until ``max_evals`` trials exist;
- a trial that raises or gives a non-finite loss is recorded as ``"fail"`` with its error
  and hyperopt is told ``STATUS_FAIL``; the sweep goes on.

The loop has three separate parts, so trials can later run elsewhere (processes, Spark tasks)
while one writer commits: :class:`Suggester` (TPE state: suggest a point, take in a finished
trial), :func:`~catdog_features.search.objective.run_trial` (a point and the data -> a record,
touching no global state) and the :class:`TrialStore` (commit).

Suggestions are drawn one at a time with ``tpe.suggest`` (not ``fmin``), each seeded from
``(random_state, tid)``: trial ``tid`` always gets the same seed whether or not the run was
interrupted before it, so a resumed run never replays the random draws of trials it already
has, TPE's random start-up phase counts the trials already done, and an interrupted +
resumed sweep makes the same suggestions as an uninterrupted one.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from catdog_features.search.data import ConcatCache, plan_folds, prepare_data
from catdog_features.search.objective import resolve_objective, run_trial
from catdog_features.search.space import (
    BACKBONES_KEY, HEAD_KEY, check_space, describe_space, flatten_point, make_space, searched_labels,
)
from catdog_features.search.result import SweepResult, fmt_value, shown_params
from catdog_features.search.trials import FORMAT, TrialStore, check_meta, move_aside

#: Hyperopt's own default number of random trials before TPE modelling starts.
DEFAULT_N_STARTUP_JOBS = 20


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


def _trial_seed(random_state: int, tid: int) -> int:
    """The suggestion seed of trial ``tid``: fixed per (random_state, tid), distinct across tids."""
    return int(np.random.SeedSequence([int(random_state), int(tid)]).generate_state(1)[0])


class Suggester:
    """Hyperopt's TPE state for one sweep: suggests points, takes in finished trials.

    Rebuilt from the committed records on every (re)start; a point depends only on the trials
    taken in so far, ``random_state`` and its tid.
    """

    def __init__(self, space: Mapping[str, Any], records: Sequence[Dict[str, Any]], random_state: int,
                 n_startup_jobs: int):
        from hyperopt import base

        self.space = space
        self.random_state = int(random_state)
        self.n_startup_jobs = int(n_startup_jobs)
        self.domain = base.Domain(lambda params: 0.0, space)
        self.trials = base.Trials()
        self.tids = [int(r["tid"]) for r in records]
        if records:
            self.trials.insert_trial_docs([self._doc(r) for r in records])
            self.trials.refresh()

    def next_tid(self) -> int:
        return max(self.tids) + 1 if self.tids else 0

    def suggest(self, tid: int, attempt: int = 0) -> Dict[str, List[Any]]:
        """Hyperopt ``vals`` (label -> [value] or [] when inactive) of trial ``tid``'s point.

        ``attempt`` > 0 redraws with another seed (the first draw repeated a known point).
        """
        from hyperopt import tpe

        seed = _trial_seed(self.random_state, tid)
        if attempt:
            seed = int(np.random.SeedSequence([int(self.random_state), int(tid), int(attempt)]).generate_state(1)[0])
        docs = tpe.suggest([tid], self.domain, self.trials, seed,
                           n_startup_jobs=self.n_startup_jobs, verbose=False)
        return _builtin({label: list(v) for label, v in docs[0]["misc"]["vals"].items()})

    def point(self, hvals: Mapping[str, List[Any]], names: List[str], fallback: Optional[str]
              ) -> Tuple[Dict[str, Any], List[str]]:
        """``(head params, backbones)`` of a suggested point."""
        from hyperopt import space_eval

        point = dict(space_eval(self.space, {k: v[0] for k, v in hvals.items() if v}))
        chosen = resolve_backbones(point.pop(BACKBONES_KEY, None), names, fallback)
        params = _builtin(flatten_point(point))
        params.setdefault(HEAD_KEY, "dense")
        return params, chosen

    def take(self, record: Mapping[str, Any]) -> None:
        """Add a finished (committed) trial to the TPE history."""
        self.trials.insert_trial_docs([self._doc(record)])
        self.trials.refresh()
        self.tids.append(int(record["tid"]))

    def _doc(self, record):
        from hyperopt import STATUS_FAIL, STATUS_OK
        from hyperopt.base import JOB_STATE_DONE

        tid = int(record["tid"])
        stored = record["hyperopt_vals"]
        vals = {label: list(stored.get(label, [])) for label in self.domain.params}
        misc = {"tid": tid, "cmd": self.domain.cmd, "workdir": self.domain.workdir,
                "idxs": {label: [tid] if v else [] for label, v in vals.items()}, "vals": vals}
        if record["status"] == "ok":
            result = {"status": STATUS_OK, "loss": float(record["loss"])}
        else:
            result = {"status": STATUS_FAIL}  # no loss: TPE treats it as +inf, i.e. a bad region
        doc = self.trials.new_trial_docs([tid], [None], [result], [misc])[0]
        doc["state"] = JOB_STATE_DONE
        return doc


def _progress_postfix(best: Optional[Dict[str, Any]], shown: Sequence[str]) -> str:
    if best is None:
        return "best=-"
    parts = [f"best={best['loss']:.5f}"]
    if best["backbones"]:
        parts.append(f"bb={fmt_value(best['backbones'])}")
    parts += [f"{k}={fmt_value(best['params'].get(k))}" for k in shown if k in best["params"]]
    return " ".join(parts)


def _resolve_space(space, sdata, search_backbones, head_params) -> Dict[str, Any]:
    if space is None or isinstance(space, str):
        user_space = make_space("default" if space is None else space, sdata.names, search_backbones)
    else:
        user_space = dict(space)
    if not sdata.names and BACKBONES_KEY in user_space:
        raise ValueError("The space has a 'backbones' key but the data is a plain matrix; pass a FeatureSet or dict.")
    if sdata.names and (BACKBONES_KEY not in user_space or not search_backbones):
        user_space[BACKBONES_KEY] = tuple(sdata.names)
    check_space(user_space, dict(head_params or {}))
    return user_space


def _fixed_for(params: Dict[str, Any], fixed: Mapping[str, Any], random_state: int) -> Dict[str, Any]:
    """The trial's params with the sweep's fixed settings its head kind takes, and its seed."""
    from catdog_features.heads.saved import head_param_names

    names = head_param_names(params[HEAD_KEY])
    params.update({k: v for k, v in fixed.items() if k in names})
    if "random_state" in names:
        params.setdefault("random_state", random_state)  # same data + seed -> same head
    return params


def sweep(
    data,
    y=None,
    *,
    space=None,
    max_evals: int = 100,
    trials_path=None,
    backbones: Optional[Sequence[str]] = None,
    search_backbones: bool = True,
    cv="auto",
    validation_split: float = 0.2,
    early_stopping: Optional[str] = None,
    random_state: Optional[int] = 0,
    head_params: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    timeout: Optional[float] = None,
    new: bool = False,
    n_startup_jobs: int = DEFAULT_N_STARTUP_JOBS,
    n_jobs: int = 1,
    distributor: str = "local",
    spark_master: Optional[str] = None,
    train_views: Optional[Sequence[str]] = None,
) -> SweepResult:
    """Search head kinds and hyperparameters (and backbone subsets) with Hyperopt TPE.

    Parameters
    ----------
    data : FeatureSet, dict of str -> array, or array
        Features. A FeatureSet brings its labels; a dict maps backbone name -> ``(n, d)``
        matrix (rows aligned); a plain ``(n, d)`` matrix has no backbone choice.
    y : array-like, optional
        Labels (any values; encoded once). Required unless ``data`` is a labeled FeatureSet.
    space : "default", "reference" or dict, optional
        A preset of :func:`~catdog_features.search.space.make_space` (default ``"default"``:
        dense or linear heads) or a space: head parameter -> hyperopt expression or constant,
        optionally ``"head"`` (kind or a choice of branches) and ``"backbones"`` (an
        expression over tuples/lists of names, ``"A+B"`` strings, or ``{name: bool expression}``).
    max_evals : int
        Total number of finished trials wanted in the trials file (earlier runs count).
    trials_path : str or Path, optional
        SQLite trials file; resumed if it exists. ``None``: an in-memory sweep (not resumable).
    backbones : sequence of str, optional
        Restrict a FeatureSet / dict to these backbones.
    search_backbones : bool
        Search which subset of backbones to concatenate (needs two or more); else use all.
    cv : "auto", None or int
        ``"auto"``: k-fold CV (:data:`~catdog_features.search.objective.AUTO_FOLDS`) below
        :data:`~catdog_features.search.objective.CV_BELOW_ROWS` rows, else a hold-out split;
        ``None``: one stratified hold-out split of ``validation_split``; an int: stratified
        k-fold CV. Loss = mean fold log loss. Seeded by ``random_state``.
    validation_split : float
        Hold-out fraction (when the objective is a hold-out split).
    early_stopping : {"inner", "fold"} or None
        Where dense heads stop early: ``"inner"``, their own split of the training part
        (the scored rows stay unseen); ``"fold"``, the scored fold (the reference recipe's
        way). ``None``: ``"fold"`` for ``space="reference"``, else ``"inner"``.
    random_state : int or None
        Seeds the split, the folds, the heads (unless the space sets ``random_state``) and
        the TPE suggestions. ``None``: a random seed, stored in the trials file for resuming.
    head_params : dict, optional
        Fixed head arguments (e.g. ``epochs``); each goes to the head kinds that take it.
    progress : bool
        Show a tqdm bar (trial n/N, best loss and its params, ETA) and a final table.
    timeout : float, optional
        Start no new trial after this many seconds (run again to continue).
    new : bool
        If ``trials_path`` exists, move it aside (``<name>.<timestamp>.bak.sqlite``) and start
        over; refused while another sweep holds it.
    n_startup_jobs : int
        Random trials before TPE starts modelling (hyperopt's default 20), counting trials
        already in the file.
    n_jobs : int
        Trials run at once (-1: one per core). TPE suggests a new point whenever a trial
        finishes, from the finished ones, and never a point already running or done; with
        ``n_jobs > 1`` the order in which trials finish (hence later suggestions) depends on
        timing. Only this process commits trials: a killed sweep loses the running ones only,
        and a resumed one stops at exactly ``max_evals``.
    distributor : {"local", "spark"}
        ``"local"``: worker processes (each with ``cores // n_jobs`` BLAS/TensorFlow threads);
        ``"spark"``: every trial is a Spark task (``n_jobs`` at once; -1: the cluster's default
        parallelism). Workers read the features from a task folder written next to
        ``trials_path`` (so put the trials file on storage the executors reach).
    spark_master : str, optional
        Spark master URL when no SparkSession is active (default ``local[*]``).
    train_views : sequence of str, optional
        Views of a multi-view FeatureSet (``extract_features(..., views=[...])``) that dense
        heads train on: each epoch draws one view per image (augmentation without rerunning
        a backbone). Folds are of images, so all views of an image sit in the same fold; the
        scored rows are the FeatureSet's own view (plain). Default: that view only.

    Returns
    -------
    SweepResult
        ``best_estimator()`` gives the best trial's head, unfitted.
    """
    if isinstance(max_evals, bool) or not isinstance(max_evals, (int, np.integer)) or int(max_evals) < 0:
        raise ValueError(f"Received max_evals={max_evals!r}; expected an int >= 0.")
    from catdog_features.distributed import check_distributor, resolve_jobs

    check_distributor(distributor)
    if not (distributor == "spark" and n_jobs == -1):
        resolve_jobs(n_jobs)
    sdata = prepare_data(data, y, backbones, train_views)
    fixed = dict(head_params or {})
    user_space = _resolve_space(space, sdata, search_backbones, fixed)
    if early_stopping is None:
        early_stopping = "fold" if space == "reference" else "inner"

    store, moved, stored_meta = None, None, {}
    if trials_path is not None:
        trials_path = Path(trials_path)
        if new:
            moved = move_aside(trials_path)  # refuses while another sweep holds the file
        store = TrialStore(trials_path)
        stored_meta = store.read_meta()
    try:
        if random_state is None:
            random_state = stored_meta.get("objective", {}).get("random_state")
            if random_state is None:
                random_state = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        objective = resolve_objective(sdata.n_rows, cv, validation_split, int(random_state), early_stopping)
        # planned (and validated) before anything is written to the trials file
        order, bounds = plan_folds(sdata.y, objective.cv, validation_split, objective.random_state)
        # the fixed settings are part of what the trials mean (a flat space's key they replace
        # is described with their value, as when they were written into the space)
        meta = {"format": FORMAT, "space": describe_space({**user_space, **fixed}), "data": sdata.describe(),
                "objective": objective.describe()}
        records = []
        if store is not None:
            if stored_meta:
                check_meta(stored_meta, meta, trials_path)
            records = store.load(known_backbones=sdata.names)
            now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            store.write_meta({**meta, "max_evals": int(max_evals), "n_startup_jobs": int(n_startup_jobs),
                              "created_at": stored_meta.get("created_at", now), "updated_at": now})
        if moved is not None and progress:
            print(f"moved the old trials file aside to {moved}", file=sys.stderr)
        from catdog_features.distributed import TaskPool

        with TaskPool(n_jobs, distributor, spark_master) as pool:
            outcome = _run(user_space, records, store, sdata, order, bounds, objective, fixed, int(max_evals),
                           int(n_startup_jobs), progress, timeout, pool,
                           None if trials_path is None else trials_path.parent)
    finally:
        if store is not None:
            store.close()
    result = SweepResult.from_trials(outcome["trials"], trials_path, searched_labels(user_space), outcome["timings"])
    if progress:
        print(result.format_table())
    return result


def _point_key(hvals: Mapping[str, List[Any]]) -> str:
    import json

    return json.dumps({k: list(v) for k, v in sorted(hvals.items())}, sort_keys=True, default=str)


#: Redraws of a suggestion that equals a trial already running or done, before taking it anyway
#: (a small discrete space can run out of new points).
MAX_REDRAWS = 20


def _run(space, records, store, sdata, order, bounds, objective, fixed, max_evals, n_startup_jobs, progress,
         timeout, pool, task_near) -> Dict[str, Any]:
    """The loop: suggest, run, commit, until ``max_evals`` trials exist (or the timeout).

    Up to ``pool.n_jobs`` trials run at once; TPE suggests a new point whenever one finishes,
    from the trials committed so far. Only this process writes the trials file, and a trial
    counts once it is committed: a killed driver loses the running trials (not committed) and
    none that finished.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    from catdog_features.distributed import task_error
    from catdog_features.search.objective import trial_task

    suggester = Suggester(space, records, objective.random_state, n_startup_jobs)
    y_ord = sdata.y[order]
    concat = ConcatCache(sdata, order)
    records = list(records)
    seen = {_point_key(r["hyperopt_vals"]) for r in records}
    timings = {"suggest": 0.0, "persist": 0.0, "trials": 0.0, "n_new": 0}
    labels = searched_labels(space)
    folder = None
    if not pool.inline:
        from catdog_features.task_arrays import make_task_folder, write_arrays

        folder = make_task_folder(task_near, "sweep")
        arrays = {f"x/{name}": sdata.blocks[name or ""][order] for name in (sdata.names or [""])}
        for view, blocks in sdata.views.items():  # training views, rows aligned with the plain ones
            arrays.update({f"v/{view}/{name}": blocks[name][order] for name in sdata.names})
        write_arrays(folder, {**arrays, "y": y_ord})
    bar = None
    if progress and len(records) < max_evals:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_evals, initial=len(records), desc="trial", unit="trial", dynamic_ncols=True)
        bar.set_postfix_str(_progress_postfix(SweepResult.from_trials(records).best_trial,
                                              shown_params(records, labels)), refresh=True)
    running: Dict[Any, Dict[str, Any]] = {}  # future -> the point it runs
    next_tid = suggester.next_tid()
    t_start = time.monotonic()

    def start_trial():
        nonlocal next_tid
        t0 = time.perf_counter()
        tid, next_tid = next_tid, next_tid + 1
        hvals = suggester.suggest(tid)
        for attempt in range(1, MAX_REDRAWS + 1):  # never a point already running or done
            if _point_key(hvals) not in seen:
                break
            hvals = suggester.suggest(tid, attempt)
        seen.add(_point_key(hvals))
        params, chosen, error = {}, [], None
        try:
            params, chosen = suggester.point(hvals, sdata.names, _best_single(records))
            params = _fixed_for(params, fixed, objective.random_state)
        except Exception as exc:  # noqa: BLE001 - an unusable point is a failed trial
            error = f"{type(exc).__name__}: {exc}"
        timings["suggest"] += time.perf_counter() - t0
        point = {"tid": tid, "hyperopt_vals": hvals, "params": params, "backbones": chosen}
        if pool.inline or error is not None:
            record = run_trial(tid, hvals, params, chosen, concat.get, y_ord, bounds, len(sdata.classes),
                               objective.early_stopping, point_error=error,
                               views_of=concat.views if sdata.views else None)
            future = _done(record)  # ran here: inline, or a point that could not be drawn
        else:
            future = pool.submit(trial_task, {**point, "data": str(folder), "bounds": [list(b) for b in bounds],
                                              "n_classes": len(sdata.classes),
                                              "early_stopping": objective.early_stopping,
                                              "views": list(sdata.views)})
        running[future] = point

    def commit(future):
        point = running.pop(future)
        exc = task_error(future)
        if exc is None:
            record = future.result()
        else:  # the task itself failed (a dead worker, a lost Spark task): a failed trial
            record = run_trial(point["tid"], point["hyperopt_vals"], point["params"], point["backbones"],
                               None, y_ord, bounds, len(sdata.classes), objective.early_stopping,
                               point_error=f"{type(exc).__name__}: {exc}")
        timings["trials"] += record["duration_s"]
        t0 = time.perf_counter()
        if store is not None:
            store.append(record)  # committed before it counts, and before the next suggestion
        timings["persist"] += time.perf_counter() - t0
        records.append(record)
        suggester.take(record)
        timings["n_new"] += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(_progress_postfix(SweepResult.from_trials(records).best_trial,
                                                  shown_params(records, labels)), refresh=True)

    try:
        while True:
            accepting = timeout is None or time.monotonic() - t_start <= timeout
            while accepting and len(running) < pool.n_jobs and len(records) + len(running) < max_evals:
                start_trial()
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: running[f]["tid"]):
                commit(future)
    finally:
        if bar is not None:
            bar.close()
        if folder is not None:
            from catdog_features.task_arrays import remove_task_folder

            remove_task_folder(folder)
    records.sort(key=lambda r: r["tid"])
    timings["concat_builds"] = concat.builds
    return {"trials": records, "timings": timings}


def _done(value):
    from concurrent.futures import Future

    future: Future = Future()
    future.set_result(value)
    return future
