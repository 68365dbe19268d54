"""Run configs: the TOML file behind ``catdog-features run CONFIG.toml``, parsed and validated.

Every key, its type and default (README "Config file reference", plus the documented extras marked
*extra*). Relative paths are relative to the config file (``--set`` overrides: to the
current directory). An unknown key or a bad value is a :class:`ConfigError` naming the file
(or the ``--set`` item) and the key, e.g. ``experiments/x.toml: [sweep] max_evls: unknown
key; expected one of max_evals, search_backbones, ...``.

``[data]``
    ``train`` (required) folder: Kaggle flat, folder-per-class, or with a labels.csv;
    ``labels_csv`` ("" = none / auto-detect); ``test`` ("" = none) unlabeled folder to
    predict; ``sample_submission`` ("" = none) ids + columns the submission must match.
``[extract]``
    ``backbones`` (list, default ResNet50, InceptionV3, Xception); ``weights``:
    ``"imagenet"`` | ``"none"`` | a weights-file path | a table backbone -> path (or
    ``"imagenet"``/``"none"``); ``image_size`` (0 = native, at most 2048); ``batch_size``
    (32, at most 4096); ``cache_dir`` ("features_cache"); ``views`` (``["plain"]``): the
    views extracted for the training and test images, e.g. ``["plain", "hflip", "aug:0-7"]``
    (ranges expand; ``plain`` is always included; see :mod:`catdog_features.features.views`);
    *extra*: ``allow_outside`` (false): see "Where a run may write" below; ``split`` ("" =
    none): also cache each backbone's feature maps at that layer (``"default"``: the
    registry's split, the input of the last block; see ``extract_features(..., split=...)``),
    for a ``TopBlockHead``.
    ``precision`` (``"float32"`` | ``"bfloat16"`` | ``"float16"``): the backbones' compute
    precision (a Keras mixed-precision policy; vectors stored float32; its own extractor).
``[sweep]``
    ``max_evals`` (100, >= 1); ``search_backbones`` (true); *extra*: ``space_preset``
    (``"default"``: dense or linear heads, chosen by measurement; ``"reference"``: the
    reference recipe's SGD space, for its reproduction), ``seed`` (0), ``cv`` (``"auto"``:
    5-fold CV below 3,000 rows, else one hold-out split; 0 = one hold-out split; k >= 2 =
    k-fold), ``validation_split`` (0.2), ``early_stopping`` (``"auto"``: ``"fold"`` for the
    reference preset, else ``"inner"``; see :mod:`catdog_features.search.objective`),
    ``epochs`` and ``patience`` (fixed dense-head settings; default: the space's),
    ``train_views`` (``[]``: plain only): views dense heads draw one of per image and epoch
    while training (sweep and ensemble; validation and OOF rows stay plain), and a
    ``[sweep.space]`` table overriding entries of the preset's space, one head parameter per
    key (``head = "linear"`` / ``{choice = ["dense", "linear"]}`` restricts the head kinds):
    a constant (``optimizer = "adam"``) or one distribution ``{loguniform = [lo, hi]}``,
    ``{uniform = [lo, hi]}``, ``{quniform = [lo, hi, q]}``, ``{qloguniform = [lo, hi, q]}``,
    ``{choice = [a, b, ...]}``.
``[ensemble]``
    ``folds`` (5, 2 to 100); ``top_k`` (5, 1 to 100) distinct best trials as members;
    ``method`` (``auto`` | ``blend`` | ``stack`` | ``mean`` | ``best`` | ``linear``); ``clip`` (``"auto"`` or a
    number in [0, 0.5)); ``tta`` (``[]``: none): views whose mean probability is a member's
    prediction, kept per member only where it lowers the OOF log loss (e.g. ``["plain",
    "hflip"]``); ``test_from`` (``auto`` | ``folds`` | ``refit``; see
    :func:`~catdog_features.ensemble.fit_oof`): a member's test and new-image predictions are
    its fold models' mean or one model refitted on all training rows (``auto``: refit the
    logistic-regression member only); *extra*: ``seed`` (0) of the folds. ``train_views`` and ``tta`` must be
    among ``[extract] views``.
``[distributed]``
    ``distributor`` (``"local"`` | ``"spark"``), ``master`` (``""``: the active
    SparkSession, else ``local[*]``; e.g. ``"spark://host:7077"``), ``jobs`` (1; -1 = one per
    core, or the cluster's parallelism with Spark): trials of the sweep and fold fits of the
    ensemble at once, ``partitions`` (0 = twice the cluster's parallelism): Spark tasks of
    the extraction. Applied to every stage of ``catdog-features run``.
``[output]``
    ``dir`` (default ``runs/<config file stem>``): the run folder (see :mod:`catdog_features.run.rundir`);
    *extra*: ``report`` (true): write the report at the end; ``allow_outside`` (false).

Where a run may write
    The two folders a run writes into, ``[output] dir`` and ``[extract] cache_dir``, must
    lie inside the config's *project folder*: the folder above the one holding the config
    file (configs live in a project's ``experiments/`` folder and address ``../runs``,
    ``../features_cache``, as the shipped ones do). A path written in the file that leaves it
    (``dir = "../../../etc"``) is refused unless that section says ``allow_outside = true``;
    a ``--set`` override is the user's explicit choice and is not restricted.
    :func:`check_paths` also refuses an output folder that already holds files but is not a
    run folder. Input paths (``[data]``, weights files) are only read and may be anywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from catdog_features.run.overrides import apply_overrides, override_keys, read_toml
from catdog_features.run.paths import is_inside
from catdog_features.run.rundir import RunDir
from catdog_features.run.values import METHODS, ConfigError, plain as _plain  # noqa: F401  (METHODS: public here too)
from catdog_features.run.values import (  # local short names, as the schema below uses them
    BadValue as _Bad, backbones_value as _backbones, bool_value as _bool, clip_value as _clip, float_value as _float,
    int_value as _int, method_value as _method, optional_path as _optional_path, path_value as _path,
    test_from_value as _test_from, views_value as _views, weights_value as _weights, where as _where,
)

DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "qloguniform", "choice")
DEFAULT_BACKBONES = ("ResNet50", "InceptionV3", "Xception")
#: Upper bounds of numeric settings: larger values only fail later, out of memory.
MAX_IMAGE_SIZE = 2048
MAX_BATCH_SIZE = 4096
MAX_EVALS = 100_000
MAX_FOLDS = 100
MAX_TOP_K = 100
MAX_SEED = 2**32 - 1  # numpy / scikit-learn seeds


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
    allow_outside: bool = False
    views: Tuple[str, ...] = ("plain",)
    split: Optional[str] = None  # also cache feature maps at this layer ("default": the registry's)
    precision: str = "float32"  # the backbones' compute precision; vectors are stored float32

    def to_dict(self) -> dict:
        """JSON form: weights as written in a config (``"none"``), paths as strings."""
        from catdog_features.features.backbones import weights_to_text

        return {"backbones": list(self.backbones), "weights": _plain(weights_to_text(self.weights)),
                "image_size": self.image_size, "batch_size": self.batch_size, "cache_dir": str(self.cache_dir),
                "allow_outside": self.allow_outside, "views": list(self.views), "split": self.split,
                "precision": self.precision}


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
    train_views: Tuple[str, ...] = ()  # (): plain only
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
    tta: Tuple[str, ...] = ()  # (): no test-time augmentation
    test_from: str = "auto"  # where members' test probabilities come from (fit_oof's test_from)


@dataclass(frozen=True)
class DistributedConfig:
    distributor: str = "local"
    master: Optional[str] = None
    jobs: int = 1
    partitions: Optional[int] = None


@dataclass(frozen=True)
class OutputConfig:
    dir: Path
    report: bool = True
    allow_outside: bool = False


@dataclass(frozen=True)
class RunConfig:
    """A validated run config; every path is absolute.

    ``sweep`` is None for a run whose trials come from an existing trials file
    (``catdog-features ensemble --trials FILE``).
    """

    data: DataConfig
    extract: ExtractConfig
    sweep: Optional[SweepConfig]
    ensemble: EnsembleConfig
    output: OutputConfig
    source: Optional[Path] = None  # the TOML file it came from
    distributed: DistributedConfig = DistributedConfig()

    def to_dict(self) -> dict:
        """JSON-able form (paths as strings, None kept): the run manifest's ``config``."""
        out = {name: None if getattr(self, name) is None else _plain(asdict(getattr(self, name)))
               for name in ("data", "sweep", "ensemble", "distributed", "output")}
        out["extract"] = self.extract.to_dict()
        return {k: out[k] for k in ("data", "extract", "sweep", "ensemble", "distributed", "output")} | {
            "source": None if self.source is None else str(self.source)
        }


def head_param_names() -> Tuple[str, ...]:
    """Head keyword arguments a ``[sweep.space]`` may set: DenseHead's, then LinearHead's, and ``head``."""
    from catdog_features.heads.saved import head_param_names as of_kind

    names = list(of_kind("dense")) + [n for n in of_kind("linear") if n not in of_kind("dense")]
    return tuple(n for n in names if n not in ("verbose",)) + ("head",)


def _split(value):
    if not isinstance(value, str):
        raise _Bad(f"received {value!r}; expected a layer name, \"LAYER:input\", \"default\" or \"\" (no split)")
    return value.strip() or None


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
def _precision(value):
    from catdog_features.features._build import PRECISIONS

    if value not in PRECISIONS:
        raise _Bad(f"received {value!r}; expected one of {', '.join(PRECISIONS)}")
    return value


def _distributor(value):
    from catdog_features.distributed import DISTRIBUTORS

    if value not in DISTRIBUTORS:
        raise _Bad(f"received {value!r}; expected one of {', '.join(DISTRIBUTORS)}")
    return value


def _master(value):
    if not isinstance(value, str):
        raise _Bad(f"received {value!r}; expected a Spark master URL such as \"spark://host:7077\" or \"local[4]\"")
    return value or None


def _jobs(value):
    if value != -1:
        _int(value, 1, " (or -1: one per core)")
    return value


def _schema(base: Path, raw: Mapping[str, Mapping[str, Any]]):
    """section -> key -> (validator(value), default or _REQUIRED)."""
    backbones = raw.get("extract", {}).get("backbones", list(DEFAULT_BACKBONES))
    try:
        backbones = _backbones(backbones, base)
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
            "backbones": (lambda v: _backbones(v, base), DEFAULT_BACKBONES),
            "weights": (lambda v: _weights(v, base, backbones), "imagenet"),
            "image_size": (lambda v: _int(v, 0, " (0: each backbone's native size)", maximum=MAX_IMAGE_SIZE) or None, None),
            "batch_size": (lambda v: _int(v, 1, maximum=MAX_BATCH_SIZE), 32),
            "cache_dir": (lambda v: _path(v, base), base / "features_cache"),
            "allow_outside": (_bool, False),
            "views": (lambda v: _views(v, plain_first=True), ("plain",)),
            "split": (_split, None),
            "precision": (_precision, "float32"),
        },
        "sweep": {
            "max_evals": (lambda v: _int(v, 1, maximum=MAX_EVALS), 100),
            "search_backbones": (_bool, True),
            "space_preset": (_space_preset, "default"),
            "seed": (lambda v: _int(v, 0), 0),
            "cv": (_cv, "auto"),
            "validation_split": (lambda v: _float(v, 0.0, 1.0), 0.2),
            "early_stopping": (_early_stopping, None),
            "epochs": (lambda v: _int(v, 1), None),
            "patience": (lambda v: _int(v, 0), None),
            "train_views": (_views, ()),
            "space": (None, {}),  # validated per entry below
        },
        "ensemble": {
            "folds": (lambda v: _int(v, 2, maximum=MAX_FOLDS), 5),
            "top_k": (lambda v: _int(v, 1, maximum=MAX_TOP_K), 5),
            "method": (_method, "auto"),
            "clip": (_clip, "auto"),
            "seed": (lambda v: _int(v, 0, maximum=MAX_SEED), 0),
            "tta": (_views, ()),
            "test_from": (_test_from, "auto"),
        },
        "distributed": {
            "distributor": (_distributor, "local"),
            "master": (_master, None),
            "jobs": (_jobs, 1),
            "partitions": (lambda v: _int(v, 0, " (0: twice the cluster's parallelism)") or None, None),
        },
        "output": {
            "dir": (lambda v: _path(v, base), None),
            "report": (_bool, True),
            "allow_outside": (_bool, False),
        },
    }


_REQUIRED = object()
_CLASSES = {"data": DataConfig, "extract": ExtractConfig, "sweep": SweepConfig, "ensemble": EnsembleConfig,
            "distributed": DistributedConfig, "output": OutputConfig}
#: The folders a run writes into: (section, key); each section's ``allow_outside`` lifts the check.
WRITE_PATHS = (("output", "dir"), ("extract", "cache_dir"))


class _Errors:
    """Words every error of one parse: ``<file or --set item>: [section] key: problem``."""

    def __init__(self, source, explicit: Mapping[Tuple[str, str], str]):
        self.source = None if source is None else str(source)
        self.explicit = explicit

    def __call__(self, section: str, key: Optional[str], problem: str) -> ConfigError:
        origin = (self.explicit.get((section, key)) if key else None) or self.source
        where = f"[{section}] {key}" if key else f"[{section}]"
        return ConfigError(f"{origin + ': ' if origin else ''}{where}: {problem}", source=origin, section=section,
                           key=key or "")


def _parse_section(section: str, keys, table, error: _Errors) -> Dict[str, Any]:
    if not isinstance(table, dict):
        raise error(section, None, f"received {table!r}; expected a table")
    for key in table:
        if key not in keys:
            raise error(section, key, f"unknown key; expected one of {', '.join(keys)}")
    out = {}
    for key, (validate, default) in keys.items():
        if key not in table:
            if default is _REQUIRED:
                raise error(section, key, "missing; this key is required")
            out[key] = default
        elif validate is not None:
            try:
                out[key] = validate(table[key])
            except _Bad as exc:
                raise error(section, key, str(exc)) from None
    return out


def _parse_space(space, error: _Errors) -> Dict[str, Any]:
    if not isinstance(space, dict):
        raise error("sweep", "space", f"received {space!r}; expected a table [sweep.space]")
    allowed = head_param_names()
    checked = {}
    for key, value in space.items():
        if key not in allowed:
            raise error("sweep.space", key, "unknown key; expected DenseHead parameters or LinearHead parameters: "
                        f"{', '.join(allowed)} (the backbones are chosen by [extract] backbones + [sweep] search_backbones)")
        try:
            checked[key] = _space_entry(value)
        except _Bad as exc:
            raise error("sweep.space", key, str(exc)) from None
    return checked


def project_folder(base_dir) -> Path:
    """Where the write paths of a config in ``base_dir`` must stay: the folder above it."""
    return Path(base_dir).expanduser().resolve().parent


def _check_write_paths(values, base: Path, error: _Errors) -> None:
    root = project_folder(base)
    for section, key in WRITE_PATHS:
        path = values[section][key]
        if values[section]["allow_outside"] or (section, key) in error.explicit or is_inside(path, root):
            continue
        raise error(section, key, f"{str(path)!r} is outside the project folder {str(root)!r} (the folder above "
                    "the config file's); expected a path inside it, or set allow_outside = true in "
                    f"[{section}] (or pass --set {section}.{key}=PATH) if a folder elsewhere is really meant")


def _check_views(values, error: _Errors) -> None:
    """``[sweep] train_views`` and ``[ensemble] tta`` name views that ``[extract] views`` extracts."""
    extracted = values["extract"]["views"]
    for section, key in (("sweep", "train_views"), ("ensemble", "tta")):
        missing = [v for v in values[section][key] if v not in extracted]
        if missing:
            raise error(section, key, f"received views {missing!r} that [extract] views does not extract "
                        f"({list(extracted)!r}); expected views among them (add them to [extract] views)")


def parse_config(raw: Mapping[str, Any], base_dir=".", name: str = "run", *, source=None,
                 explicit: Mapping[Tuple[str, str], str] = None) -> RunConfig:
    """Validate a config mapping (as read from TOML); relative paths resolve against ``base_dir``.

    Parameters
    ----------
    raw : mapping
    base_dir : path
        The config file's folder.
    name : str
        Default run folder name (``runs/<name>``).
    source : path, optional
        The file ``raw`` came from, named in every error.
    explicit : mapping (section, key) -> str, optional
        Keys given on the command line -> how (``"--set output.dir=x"``, ``"--out x"``):
        named instead of the file in errors, and exempt from the write-path check (see the
        module docstring).

    Raises
    ------
    ConfigError
        For an unknown section or key, a missing required key, or a bad value; the message
        names the file (or ``--set`` item) and starts the rest with ``[section] key:``.
    """
    base = Path(base_dir).expanduser().resolve()
    error = _Errors(source, dict(explicit or {}))
    schema = _schema(base, raw)
    unknown = [s for s in raw if s not in schema]
    if unknown:
        raise error(unknown[0], None, "unknown section; expected one of " + ", ".join(f"[{s}]" for s in schema))
    values = {section: _parse_section(section, keys, raw.get(section, {}), error) for section, keys in schema.items()}
    values["sweep"]["space"] = _parse_space(raw.get("sweep", {}).get("space", {}), error)
    if values["output"]["dir"] is None:
        values["output"]["dir"] = base / "runs" / name
    _check_write_paths(values, base, error)
    _check_views(values, error)
    return RunConfig(**{s: _CLASSES[s](**v) for s, v in values.items()}, source=None if source is None else Path(source))


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
    return parse_config(raw, base_dir=path.parent, name=path.stem, source=path, explicit=override_keys(overrides))


def check_paths(config: RunConfig) -> None:
    """Raise naming the file and key of an input path that does not exist or an unusable output folder.

    Raises
    ------
    FileNotFoundError
        A ``[data]`` folder/file or a weights file does not exist.
    ConfigError
        ``[output] dir`` exists but is not a run folder (it would be written into).
    """
    origin = f"{config.source}: " if config.source is not None else ""
    items = [("data", "train", config.data.train, True), ("data", "test", config.data.test, True),
             ("data", "labels_csv", config.data.labels_csv, False),
             ("data", "sample_submission", config.data.sample_submission, False)]
    weights = config.extract.weights
    for name, w in (weights.items() if isinstance(weights, dict) else [("weights", weights)]):
        if isinstance(w, Path):
            items.append(("extract", "weights" if name == "weights" else f"weights.{name}", w, False))
    for section, key, path, is_dir in items:
        if path is not None and not (path.is_dir() if is_dir else path.is_file()):
            kind = "folder" if is_dir else "file"
            raise FileNotFoundError(f"{origin}{_where(section, key)}: {kind} not found: {str(path)!r}")
    problem = RunDir(config.output.dir).unusable()
    if problem:
        raise ConfigError(f"{origin}[output] dir: {str(config.output.dir)!r} {problem}", source=origin.rstrip(": ") or None,
                          section="output", key="dir")
