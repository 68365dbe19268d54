"""Search spaces: the default and the reference spaces, the backbone-subset choice, TOML tables.

A space maps DenseHead parameter names to hyperopt expressions or constants, plus the
``"backbones"`` key (:data:`BACKBONES_KEY`) choosing which backbones to concatenate.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict, List, Mapping, Sequence


#: Up to this many backbones, the subset choice enumerates every non-empty subset in one
#: ``hp.choice``; beyond it (2**7 - 1 = 127 options get sparse for TPE) each backbone gets
#: its own in/out switch.
MAX_ENUMERATED_BACKBONES = 6
#: The key of a search space that chooses the backbones (every other key is a head parameter).
BACKBONES_KEY = "backbones"


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


def searched_keys(space: Mapping[str, Any]) -> List[str]:
    """Keys of ``space`` whose value involves a hyperopt parameter."""
    from hyperopt import pyll

    keys = []
    for key, value in space.items():
        nodes = pyll.dfs(pyll.as_apply(value))
        if any(node.name == "hyperopt_param" for node in nodes):
            keys.append(key)
    return keys
