"""Run configs: the TOML file behind ``catdog-features run CONFIG.toml``, parsed and validated.

Every key, its type and default (DESIGN.md "Run config", plus the documented extras marked
*extra*). Relative paths are relative to the config file (``--set`` overrides: to the
current directory). An unknown key or a bad value is a ``ValueError`` naming the key, e.g.
``[sweep] max_evls: unknown key; expected one of max_evals, search_backbones, ...``.

``[data]``
    ``train`` (required) folder: Kaggle flat, folder-per-class, or with a labels.csv;
    ``labels_csv`` ("" = none / auto-detect); ``test`` ("" = none) unlabeled folder to
    predict; ``sample_submission`` ("" = none) ids + columns the submission must match.
``[extract]``
    ``backbones`` (list, default ResNet50, InceptionV3, Xception); ``weights``:
    ``"imagenet"`` | ``"none"`` | a weights-file path | a table backbone -> path (or
    ``"imagenet"``/``"none"``); ``image_size`` (0 = native); ``batch_size`` (32);
    ``cache_dir`` ("features_cache").
``[sweep]``
    ``max_evals`` (100, >= 1); ``search_backbones`` (true); *extra*: ``space_preset``
    (``"default"``: dense or linear heads, chosen by measurement; ``"reference"``: the
    reference recipe's SGD space, for its reproduction), ``seed`` (0), ``cv`` (``"auto"``:
    5-fold CV below 3,000 rows, else one hold-out split; 0 = one hold-out split; k >= 2 =
    k-fold), ``validation_split`` (0.2), ``early_stopping`` (``"auto"``: ``"fold"`` for the
    reference preset, else ``"inner"``; see :mod:`catdog_features.search.objective`),
    ``epochs`` and ``patience`` (fixed dense-head settings; default: the space's), and a
    ``[sweep.space]`` table overriding entries of the preset's space, one head parameter per
    key (``head = "linear"`` / ``{choice = ["dense", "linear"]}`` restricts the head kinds):
    a constant (``optimizer = "adam"``) or one distribution ``{loguniform = [lo, hi]}``,
    ``{uniform = [lo, hi]}``, ``{quniform = [lo, hi, q]}``, ``{qloguniform = [lo, hi, q]}``,
    ``{choice = [a, b, ...]}``.
``[ensemble]``
    ``folds`` (5); ``top_k`` (5) distinct best trials as members; ``method``
    (``auto`` | ``blend`` | ``stack`` | ``mean``); ``clip`` (``"auto"`` or a number in
    [0, 0.5)); *extra*: ``seed`` (0) of the folds.
``[output]``
    ``dir`` (default ``runs/<config file stem>``): the run folder (see :mod:`catdog_features.run.rundir`);
    *extra*: ``report`` (true): write the report at the end (if :mod:`catdog_features.report` exists).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

METHODS = ("auto", "blend", "stack", "mean")
DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "qloguniform", "choice")
DEFAULT_BACKBONES = ("ResNet50", "InceptionV3", "Xception")


@dataclass(frozen=True)
class DataConfig:
    train: Path
    labels_csv: Optional[Path] = None
    test: Optional[Path] = None
    sample_submission: Optional[Path] = None


@dataclass(frozen=True)
class ExtractConfig:
    backbones: Tuple[str, ...] = DEFAULT_BACKBONES
    #: "imagenet", None (random init), a Path, or a dict backbone -> "imagenet" | None | Path
    weights: Any = "imagenet"
    image_size: Optional[int] = None
    batch_size: int = 32
    cache_dir: Path = Path("features_cache")


@dataclass(frozen=True)
class SweepConfig:
    max_evals: int = 100
    search_backbones: bool = True
    space_preset: str = "default"
    seed: int = 0
    cv: Union[str, int, None] = "auto"  # "auto", None (hold-out) or k folds
    validation_split: float = 0.2
    early_stopping: Optional[str] = None  # None: the preset's ("fold" for reference, else "inner")
    epochs: Optional[int] = None
    patience: Optional[int] = None
    #: head parameter -> constant or {distribution: args}, as written in the TOML
    space: Dict[str, Any] = field(default_factory=dict)

    def head_params(self) -> Dict[str, int]:
        """Fixed dense-head settings given in ``[sweep]`` (``epochs``, ``patience``)."""
        return {k: v for k, v in (("epochs", self.epochs), ("patience", self.patience)) if v is not None}


@dataclass(frozen=True)
class EnsembleConfig:
    folds: int = 5
    top_k: int = 5
    method: str = "auto"
    clip: Union[str, float] = "auto"
    seed: int = 0


@dataclass(frozen=True)
class OutputConfig:
    dir: Path
    report: bool = True


@dataclass(frozen=True)
class RunConfig:
    """A validated run config; every path is absolute."""

    data: DataConfig
    extract: ExtractConfig
    sweep: SweepConfig
    ensemble: EnsembleConfig
    output: OutputConfig
    source: Optional[Path] = None  # the TOML file it came from

    def to_dict(self) -> dict:
        """JSON-able form (paths as strings, None kept), e.g. for the run manifest."""

        def plain(value):
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return {name: plain(asdict(getattr(self, name))) for name in ("data", "extract", "sweep", "ensemble", "output")} | {
            "source": None if self.source is None else str(self.source)
        }


# --------------------------------------------------------------------------- validators
class _Bad(ValueError):
    """A bad value; the caller prefixes the key."""


def _where(section: str, key: str) -> str:
    return f"[{section}] {key}"


def _int(value, minimum: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Bad(f"received {value!r}; expected an integer >= {minimum}{what}")
    return value


def _float(value, low: float, high: float, what: str = "in") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low < value < high:
        raise _Bad(f"received {value!r}; expected a number {what} ({low}, {high})")
    return float(value)


def _bool(value) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"received {value!r}; expected true or false")
    return value


def _str(value) -> str:
    if not isinstance(value, str):
        raise _Bad(f"received {value!r}; expected a string")
    return value


def _path(value, base: Path) -> Path:
    text = _str(value).strip()
    if not text:
        raise _Bad("received an empty string; expected a path")
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else (base / path).resolve()


def _optional_path(value, base: Path) -> Optional[Path]:
    return None if _str(value).strip() == "" else _path(value, base)


def _backbones(value) -> Tuple[str, ...]:
    from catdog_features.features.backbones import parse_backbones

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise _Bad(f"received {value!r}; expected a non-empty list of backbone names such as [\"ResNet50\", \"Xception\"]")
    try:
        return parse_backbones(value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _weights(value, base: Path, backbones: Sequence[str]):
    from catdog_features.features.backbones import parse_weights, weights_kind

    if not isinstance(value, (str, dict)):
        raise _Bad(f"received {value!r}; expected \"imagenet\", \"none\", a weights-file path or a table backbone = path")
    try:
        spec = parse_weights(value, base_dir=base)
    except ValueError as exc:
        raise _Bad(str(exc)) from None

    def as_path(w):  # file paths as resolved Paths, like every other path of the config
        return Path(w).resolve() if weights_kind(w) == "file" else w

    if isinstance(spec, dict):
        for name in spec:
            if name not in backbones:
                raise _Bad(f"has an entry for {name!r}, which is not in [extract] backbones {list(backbones)}")
        return {name: as_path(w) for name, w in spec.items()}
    if weights_kind(spec) == "file" and len(backbones) != 1:
        raise _Bad(
            f"received one weights file {value!r} for {len(backbones)} backbones; expected a table "
            "such as {ResNet50 = \"resnet.h5\", Xception = \"xception.h5\"}"
        )
    return as_path(spec)


def _clip(value):
    if isinstance(value, str):
        if value != "auto":
            raise _Bad(f"received {value!r}; expected \"auto\" or a number in [0, 0.5)")
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 0.5:
        raise _Bad(f"received {value!r}; expected \"auto\" or a number in [0, 0.5)")
    return float(value)


def _method(value):
    if value not in METHODS:
        raise _Bad(f"received {value!r}; expected one of {', '.join(METHODS)}")
    return value


def head_param_names() -> Tuple[str, ...]:
    """Head keyword arguments a ``[sweep.space]`` may set: DenseHead's, then LinearHead's, and ``head``."""
    from catdog_features.heads.saved import head_param_names as of_kind

    names = list(of_kind("dense")) + [n for n in of_kind("linear") if n not in of_kind("dense")]
    return tuple(n for n in names if n not in ("verbose",)) + ("head",)


def _space_preset(value):
    if value not in ("default", "reference"):
        raise _Bad(f"received {value!r}; expected \"default\" or \"reference\"")
    return value


def _cv(value):
    if value == "auto":
        return "auto"
    if value == 0 and not isinstance(value, bool):
        return None
    return _int(value, 2, " (or 0 for one hold-out split, or \"auto\")")


def _early_stopping(value):
    if value not in ("auto", "inner", "fold"):
        raise _Bad(f"received {value!r}; expected \"auto\", \"inner\" or \"fold\"")
    return None if value == "auto" else value


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _space_entry(value):
    """Validate one ``[sweep.space]`` value: a constant or ``{distribution = args}``."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        raise _Bad(f"received the list {value!r}; expected a constant or a table such as {{choice = {value!r}}}")
    if not isinstance(value, dict) or len(value) != 1:
        raise _Bad(f"received {value!r}; expected a constant or one distribution: "
                   + ", ".join(f"{{{d} = [...]}}" for d in DISTRIBUTIONS))
    (dist, args), = value.items()
    if dist not in DISTRIBUTIONS:
        raise _Bad(f"unknown distribution {dist!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise _Bad(f"{dist} received {args!r}; expected a non-empty list")
    if dist == "choice":
        if not all(isinstance(a, (bool, int, float, str)) for a in args):
            raise _Bad(f"choice received {args!r}; expected a list of constants")
        return {dist: list(args)}
    n = 3 if dist.startswith("q") else 2
    if len(args) != n or not all(_number(a) for a in args):
        raise _Bad(f"{dist} received {args!r}; expected {n} numbers [low, high{', q' if n == 3 else ''}]")
    low, high = args[0], args[1]
    if not low < high or ("log" in dist and low <= 0) or (n == 3 and args[2] <= 0):
        raise _Bad(f"{dist} received {args!r}; expected low < high{', low > 0' if 'log' in dist else ''}"
                   f"{', q > 0' if n == 3 else ''}")
    return {dist: list(args)}


def to_hyperopt(space: Mapping[str, Any]) -> Dict[str, Any]:
    """``[sweep.space]`` entries as hyperopt expressions (labels = the keys)."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    out = {}
    for key, value in space.items():
        if not isinstance(value, dict):
            out[key] = value
            continue
        (dist, args), = value.items()
        if dist == "choice":
            out[key] = hp.choice(key, list(args))
        elif dist == "uniform":
            out[key] = hp.uniform(key, *args)
        elif dist == "loguniform":
            out[key] = hp.loguniform(key, math.log(args[0]), math.log(args[1]))
        else:
            low, high, q = args
            expr = hp.quniform(key, low, high, q) if dist == "quniform" else hp.qloguniform(key, math.log(low), math.log(high), q)
            integral = all(float(a).is_integer() for a in args)
            out[key] = scope.int(expr) if integral else expr
    return out


# --------------------------------------------------------------------------- schema
def _schema(base: Path, raw: Mapping[str, Mapping[str, Any]]):
    """section -> key -> (validator(value), default or _REQUIRED)."""
    backbones = raw.get("extract", {}).get("backbones", list(DEFAULT_BACKBONES))
    try:
        backbones = _backbones(backbones)
    except _Bad:
        backbones = ()  # reported when the key itself is validated
    return {
        "data": {
            "train": (lambda v: _path(v, base), _REQUIRED),
            "labels_csv": (lambda v: _optional_path(v, base), None),
            "test": (lambda v: _optional_path(v, base), None),
            "sample_submission": (lambda v: _optional_path(v, base), None),
        },
        "extract": {
            "backbones": (_backbones, DEFAULT_BACKBONES),
            "weights": (lambda v: _weights(v, base, backbones), "imagenet"),
            "image_size": (lambda v: _int(v, 0, " (0: each backbone's native size)") or None, None),
            "batch_size": (lambda v: _int(v, 1), 32),
            "cache_dir": (lambda v: _path(v, base), base / "features_cache"),
        },
        "sweep": {
            "max_evals": (lambda v: _int(v, 1), 100),
            "search_backbones": (_bool, True),
            "space_preset": (_space_preset, "default"),
            "seed": (lambda v: _int(v, 0), 0),
            "cv": (_cv, "auto"),
            "validation_split": (lambda v: _float(v, 0.0, 1.0), 0.2),
            "early_stopping": (_early_stopping, None),
            "epochs": (lambda v: _int(v, 1), None),
            "patience": (lambda v: _int(v, 0), None),
            "space": (None, {}),  # validated per entry below
        },
        "ensemble": {
            "folds": (lambda v: _int(v, 2), 5),
            "top_k": (lambda v: _int(v, 1), 5),
            "method": (_method, "auto"),
            "clip": (_clip, "auto"),
            "seed": (lambda v: _int(v, 0), 0),
        },
        "output": {
            "dir": (lambda v: _path(v, base), None),
            "report": (_bool, True),
        },
    }


_REQUIRED = object()
_CLASSES = {"data": DataConfig, "extract": ExtractConfig, "sweep": SweepConfig, "ensemble": EnsembleConfig, "output": OutputConfig}


def parse_config(raw: Mapping[str, Any], base_dir=".", name: str = "run") -> RunConfig:
    """Validate a config mapping (as read from TOML); relative paths resolve against ``base_dir``.

    Raises
    ------
    ValueError
        For an unknown section or key, a missing required key, or a bad value; the message
        starts with ``[section] key:``.
    """
    base = Path(base_dir).expanduser().resolve()
    schema = _schema(base, raw)
    unknown = [s for s in raw if s not in schema]
    if unknown:
        raise ValueError(f"[{unknown[0]}]: unknown section; expected one of " + ", ".join(f"[{s}]" for s in schema))
    values: Dict[str, Dict[str, Any]] = {}
    for section, keys in schema.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ValueError(f"[{section}]: received {table!r}; expected a table")
        for key in table:
            if key not in keys:
                raise ValueError(f"{_where(section, key)}: unknown key; expected one of {', '.join(keys)}")
        out = {}
        for key, (validate, default) in keys.items():
            if key not in table:
                if default is _REQUIRED:
                    raise ValueError(f"{_where(section, key)}: missing; this key is required")
                out[key] = default
                continue
            if validate is None:
                continue
            try:
                out[key] = validate(table[key])
            except _Bad as exc:
                raise ValueError(f"{_where(section, key)}: {exc}") from None
        values[section] = out

    space = raw.get("sweep", {}).get("space", {})
    if not isinstance(space, dict):
        raise ValueError(f"[sweep] space: received {space!r}; expected a table [sweep.space]")
    allowed = head_param_names()
    checked = {}
    for key, value in space.items():
        if key not in allowed:
            raise ValueError(
                f"[sweep.space] {key}: unknown key; expected DenseHead parameters or LinearHead parameters: "
                f"{', '.join(allowed)} (the backbones are chosen by [extract] backbones + [sweep] search_backbones)"
            )
        try:
            checked[key] = _space_entry(value)
        except _Bad as exc:
            raise ValueError(f"[sweep.space] {key}: {exc}") from None
    values["sweep"]["space"] = checked
    if values["output"]["dir"] is None:
        values["output"]["dir"] = base / "runs" / name
    return RunConfig(**{s: _CLASSES[s](**v) for s, v in values.items()})


def _parse_value(text: str):
    """A ``--set`` value: a TOML literal (``4``, ``true``, ``["A", "B"]``) or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_PATH_KEYS = {("data", "train"), ("data", "labels_csv"), ("data", "test"), ("data", "sample_submission"),
              ("extract", "cache_dir"), ("output", "dir")}


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Apply ``section.key=value`` overrides (``sweep.space.lr=0.005`` for nested tables).

    Relative paths given this way are relative to the current directory.
    """
    import copy

    raw = copy.deepcopy(dict(raw))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected section.key=value, e.g. sweep.max_evals=10")
        dotted, text = item.split("=", 1)
        parts = [p.strip() for p in dotted.split(".")]
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"--set {item!r}: expected section.key=value, e.g. sweep.max_evals=10")
        value = _parse_value(text.strip())
        if tuple(parts) in _PATH_KEYS and isinstance(value, str) and value.strip():
            value = os.path.abspath(os.path.expanduser(value))
        table = raw
        for part in parts[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a table")
        table[parts[-1]] = value
    return raw


def read_toml(path) -> Dict[str, Any]:
    """Read a TOML file; syntax errors become ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found. Received: {str(path)!r}.")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from None


def load_config(path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read, override and validate a run config file.

    Parameters
    ----------
    path : path
        The TOML file; its folder is the base of relative paths.
    overrides : sequence of str
        ``section.key=value`` items (``catdog-features run --set``).

    Returns
    -------
    RunConfig
    """
    path = Path(path).expanduser().resolve()
    raw = apply_overrides(read_toml(path), overrides)
    config = parse_config(raw, base_dir=path.parent, name=path.stem)
    return RunConfig(config.data, config.extract, config.sweep, config.ensemble, config.output, source=path)


def check_paths(config: RunConfig) -> None:
    """Raise ``FileNotFoundError`` naming the key of any input path that does not exist."""
    items = [("data", "train", config.data.train, True), ("data", "test", config.data.test, True),
             ("data", "labels_csv", config.data.labels_csv, False),
             ("data", "sample_submission", config.data.sample_submission, False)]
    weights = config.extract.weights
    for name, w in (weights.items() if isinstance(weights, dict) else [("weights", weights)]):
        if isinstance(w, Path):
            items.append(("extract", "weights" if name == "weights" else f"weights.{name}", w, False))
    for section, key, path, is_dir in items:
        if path is None:
            continue
        if not (path.is_dir() if is_dir else path.is_file()):
            kind = "folder" if is_dir else "file"
            raise FileNotFoundError(f"{_where(section, key)}: {kind} not found: {str(path)!r}")
