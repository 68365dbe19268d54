"""Search spaces: the default and the reference presets, the backbone-subset choice, checks.

A space maps head parameter names to hyperopt expressions or constants, plus two special keys:

* ``"backbones"`` (:data:`BACKBONES_KEY`) chooses which backbones to concatenate;
* ``"head"`` (:data:`~catdog_features.heads.HEAD_KEY`) names the head kind: a constant
  (``"dense"``, ``"linear"``) or a choice over *branches*, dicts that each carry their own
  ``"head"`` and that kind's parameters. Any dict value (a branch, or an optimizer branch
  ``{"optimizer": "adam", "lr": ...}``) is merged into the trial's params when a point is
  drawn (:func:`flatten_point`), so a trial's params are always flat constructor arguments
  plus ``"head"``. Without a ``"head"`` key the head is dense.

Presets (:data:`SPACE_PRESETS`): ``"default"`` (:func:`default_space`, chosen by measurement in
``experiments/bench_heads.py`` to beat a tuned logistic regression on any feature matrix) and
``"reference"`` (:func:`reference_space`, the reference recipe's SGD space, kept by name for
the reproduction configs).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

#: Up to this many backbones, the subset choice enumerates every non-empty subset in one
#: ``hp.choice``; beyond it (2**7 - 1 = 127 options get sparse for TPE) each backbone gets
#: its own in/out switch.
MAX_ENUMERATED_BACKBONES = 6
#: The key of a search space that chooses the backbones (every other key is a head parameter).
BACKBONES_KEY = "backbones"
HEAD_KEY = "head"  # == catdog_features.heads.HEAD_KEY (not imported: heads pulls in scikit-learn)
SPACE_PRESETS = ("default", "reference")

#: The default space's dense branch, per optimizer: learning-rate range (log-uniform).
DEFAULT_LR_RANGES = {"adam": (3e-4, 3e-2), "sgd": (3e-3, 0.3), "adadelta": (0.1, 3.0)}


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


def _with_backbones(space: Dict[str, Any], backbones: Sequence[str], search_backbones: bool) -> Dict[str, Any]:
    names = list(dict.fromkeys(backbones))
    if names:
        space[BACKBONES_KEY] = backbone_space(names) if search_backbones and len(names) >= 2 else tuple(names)
    return space


def reference_space(backbones: Sequence[str] = (), search_backbones: bool = True) -> Dict[str, Any]:
    """The reference recipe's search space (dense heads only), plus the backbone subset.

    ``lr`` loguniform(0.001, 0.01), ``decay`` uniform(0.0005, 0.05), ``momentum`` choice of
    0.5 / 0.8 / 0.9, ``dropout`` choice of 0.1 / 0.2 / 0.3 / 0.5, SGD, up to 200 epochs with
    early-stopping patience 8, no standardisation. Tuned for ~20,000 x 6,144 ImageNet
    features; on small or other matrices its decayed learning rate collapses early.
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
    return _with_backbones(space, backbones, search_backbones)


def _optimizer_branches(optimizers: Sequence[str], lr=None) -> List[Dict[str, Any]]:
    from hyperopt import hp

    branches = []
    for name in optimizers:
        low, high = DEFAULT_LR_RANGES[name]
        branch = {"optimizer": name,
                  "lr": lr if lr is not None else hp.loguniform(f"{name}_lr", math.log(low), math.log(high))}
        if name == "sgd":
            branch["momentum"] = hp.choice("sgd_momentum", [0.0, 0.9])
        branches.append(branch)
    return branches


def dense_branch(overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The default space's dense-head branch, with ``overrides`` (hyperopt expressions or constants).

    Standardised inputs and a refit on all rows after early stopping (``refit``); adam / SGD
    (with or without momentum) / adadelta, each with its own log-uniform learning-rate range; L2 weight decay off or log-uniform in [1e-6, 1e-1]; input
    dropout 0 / 0.1 / 0.25 / 0.5; no hidden layer or 128 ReLU units; batch 64; up to 400
    epochs with patience 20 (heads converge: a trial stopped at its epoch cap wastes it).
    An ``optimizer`` override (a constant or a choice) restricts the optimizers; an ``lr``
    override replaces every optimizer's range.
    """
    from hyperopt import hp

    overrides = dict(overrides or {})
    optimizer = overrides.pop("optimizer", None)
    lr = overrides.pop("lr", None)
    if optimizer is None:
        optimizers = list(DEFAULT_LR_RANGES)
        opt_expr = hp.choice("optimizer", _optimizer_branches(optimizers, lr))
    elif isinstance(optimizer, str):
        opt_expr = _optimizer_branches([optimizer], lr)[0] if optimizer in DEFAULT_LR_RANGES else optimizer
        if isinstance(opt_expr, str) and lr is not None:
            overrides["lr"] = lr
    else:  # an expression chosen by the user: their optimizers, their lr (or the default of each)
        opt_expr = optimizer
        if lr is not None:
            overrides["lr"] = lr
    branch: Dict[str, Any] = {
        HEAD_KEY: "dense",
        "optimizer": opt_expr,
        "l2": hp.choice("l2_on", [0.0, hp.loguniform("l2", math.log(1e-6), math.log(1e-1))]),
        "dropout": hp.choice("dropout", [0.0, 0.1, 0.25, 0.5]),
        "hidden_units": hp.choice("hidden_units", [0, 128]),
        "standardize": True,
        "refit": True,
        "batch_size": 64,
        "epochs": 400,
        "patience": 20,
    }
    branch.update(overrides)
    return branch


#: The default space's linear branch: the input transforms it chooses among
#: (:data:`catdog_features.heads.transforms.TRANSFORMS`, not imported: heads pulls in scikit-learn).
LINEAR_TRANSFORMS = ("none", "sqrt", "log1p")


def linear_branch(overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The default space's logistic-regression branch: ``C`` log-uniform in [1e-4, 1e2], the input
    ``transform`` (none / signed sqrt / signed log1p), standardised."""
    from hyperopt import hp

    branch: Dict[str, Any] = {HEAD_KEY: "linear", "C": hp.loguniform("C", math.log(1e-4), math.log(1e2)),
                              "transform": hp.choice("linear_transform", list(LINEAR_TRANSFORMS))}
    branch.update(overrides or {})
    return branch


def default_space(backbones: Sequence[str] = (), search_backbones: bool = True,
                  overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The default search space: a dense or a linear head, plus the backbone subset.

    ``head`` is a choice between :func:`dense_branch` and :func:`linear_branch`.
    ``overrides`` (head parameter -> hyperopt expression or constant, e.g. a run config's
    ``[sweep.space]``) go to the branch(es) whose head kind takes that parameter; ``head``
    itself (``"dense"``, ``"linear"``, or a list of those) keeps only those branches.

    Parameters
    ----------
    backbones : sequence of str
        Backbone names available (empty for a plain feature matrix).
    search_backbones : bool
        Whether the subset of backbones is searched (needs two or more).
    overrides : mapping, optional

    Returns
    -------
    dict
    """
    from hyperopt import hp

    from catdog_features.heads.saved import head_param_names

    overrides = dict(overrides or {})
    kinds = overrides.pop(HEAD_KEY, ["dense", "linear"])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    unknown_kinds = [k for k in kinds if k not in ("dense", "linear")]
    if unknown_kinds or not kinds:
        raise ValueError(f"Unknown head kinds. Received: head={kinds!r}; expected 'dense' and/or 'linear'.")
    taken = {kind: {k: v for k, v in overrides.items() if k in head_param_names(kind)} for kind in kinds}
    unused = sorted(set(overrides) - {k for t in taken.values() for k in t})
    if unused:
        expected = sorted({n for kind in kinds for n in head_param_names(kind)})
        raise ValueError(f"Unknown search-space keys for the head kinds {kinds}. Received: {unused}; "
                         f"expected parameters of those heads: {', '.join(expected)}.")
    builders = {"dense": dense_branch, "linear": linear_branch}
    branches = [builders[kind](taken[kind]) for kind in kinds]
    space: Dict[str, Any] = {HEAD_KEY: branches[0] if len(branches) == 1 else hp.choice(HEAD_KEY, branches)}
    return _with_backbones(space, backbones, search_backbones)


def make_space(preset: str = "default", backbones: Sequence[str] = (), search_backbones: bool = True,
               overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The space of a preset (:data:`SPACE_PRESETS`), with ``overrides`` of head parameters."""
    if preset == "default":
        return default_space(backbones, search_backbones, overrides)
    if preset == "reference":
        space = reference_space(backbones, search_backbones)
        space.update(overrides or {})
        return space
    raise ValueError(f"Unknown search space preset. Received: space={preset!r}; expected one of: "
                     f"{', '.join(SPACE_PRESETS)}, or a dict.")


# --------------------------------------------------------------------------- points
def flatten_point(point: Mapping[str, Any]) -> Dict[str, Any]:
    """A drawn point as flat head params: dict values (branches) are merged into their parent."""
    out: Dict[str, Any] = {}
    for key, value in point.items():
        if isinstance(value, Mapping) and key != BACKBONES_KEY:
            out.update(flatten_point(value))
        else:
            out[key] = value
    return out


def check_space(space: Mapping[str, Any], fixed: Mapping[str, Any], n_draws: int = 64) -> None:
    """Raise a ValueError if a point of ``space`` (plus ``fixed`` params) is not a valid head config.

    Checks ``n_draws`` seeded random points (every branch of a choice is drawn with near
    certainty): each names a known head kind and only that kind's parameters; every ``fixed``
    key is taken by at least one kind drawn.
    """
    from hyperopt import pyll

    from catdog_features.heads.saved import get_kind, head_param_names

    body = pyll.as_apply({k: v for k, v in space.items() if k != BACKBONES_KEY})
    kinds, problems = set(), {}
    for seed in range(n_draws):
        params = flatten_point(pyll.stochastic.sample(body, rng=np.random.default_rng(seed)))
        kind = params.pop(HEAD_KEY, "dense")
        get_kind(kind)
        kinds.add(kind)
        bad = sorted(set(params) - set(head_param_names(kind)))
        if bad:
            problems.setdefault(kind, set()).update(bad)
    unused = sorted(k for k in fixed if not any(k in head_param_names(kind) for kind in kinds))
    if problems or unused:
        kind, bad = next(iter(problems.items())) if problems else (sorted(kinds)[0], unused)
        raise ValueError(
            f"Unknown search-space keys. Received: {sorted(bad)} for a {kind} head; expected its parameters "
            f"({', '.join(sorted(head_param_names(kind)))}), {HEAD_KEY!r} or {BACKBONES_KEY!r}."
        )


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


def searched_labels(space: Mapping[str, Any]) -> List[str]:
    """Labels of the hyperopt parameters in ``space`` (in graph order, without the backbone choice)."""
    from hyperopt import pyll

    labels = []
    for node in pyll.dfs(pyll.as_apply(dict(space))):
        if node.name == "hyperopt_param":
            label = node.arg["label"].obj
            if label not in labels and label != BACKBONES_KEY and not label.startswith("use_"):
                labels.append(label)
    return labels
