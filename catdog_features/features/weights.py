"""Weights specs: one parser for the API, the run config and every command.

A weights value is ``"imagenet"`` (the backbone's published pretrained weights: ImageNet for
``keras.applications``, the preset's own for ``hub:`` backbones, the file's own for
``keras:`` model files), ``None`` / ``"none"`` (random init, reproducible), a path (a
weights file; for ``hub:`` backbones a local preset directory), or a dict backbone -> one of
those (command line and config: ``NAME=W,NAME=W``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

from catdog_features.features._build import RANDOM_INIT_SEED, sha256_file

WEIGHTS_EXPECTED = ("'imagenet', 'none' (random init), the path of a weights file, or one of those per "
                     "backbone (a dict; on the command line NAME=W,NAME=W)")


def weights_kind(weights) -> str:
    """Classify one ``weights`` value: ``"imagenet"``, ``"none"`` or ``"file"``."""
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in ("none", "random")):
        return "none"
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        return "imagenet"
    if isinstance(weights, (str, os.PathLike)) and os.fspath(weights).strip():
        return "file"
    raise ValueError(f"Invalid weights. Received: weights={weights!r}; expected {WEIGHTS_EXPECTED}.")


def _one_weights(value, base_dir):
    kind = weights_kind(value)
    if kind == "none":
        return None
    if kind == "imagenet":
        return "imagenet"
    path = Path(os.path.expanduser(os.fspath(value).strip()))
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return str(path)


def parse_weights(value, base_dir=None):
    """Normalise a weights spec from Python, a config file or the command line.

    Parameters
    ----------
    value : None, str, path or dict
        ``"imagenet"``, ``None``/``"none"`` (random init), a weights file, a dict backbone
        -> one of those, or the command-line form ``"NAME=W,NAME=W"`` (a string holding
        ``=`` that is not an existing file). Each item is split at its *last* ``=``, so
        names that hold one (``keras:m.keras?preprocess=tf=none``) work.
    base_dir : path, optional
        Relative file paths are taken relative to it (a config file's folder).

    Returns
    -------
    None, "imagenet", str or dict
        The same spec with canonical backbone names and file paths as strings.
    """
    from catdog_features.features.backbones import get_backbone

    if isinstance(value, str) and "=" in value and not os.path.exists(value):
        table = {}
        for item in value.split(","):
            name, sep, weights = item.rpartition("=")
            if not sep or not name.strip() or not weights.strip():
                raise ValueError(f"Invalid weights. Received: weights={value!r}; expected {WEIGHTS_EXPECTED}.")
            table[name.strip()] = weights.strip()
        value = table
    if isinstance(value, dict):
        return {get_backbone(name).name: _one_weights(item, base_dir) for name, item in value.items()}
    return _one_weights(value, base_dir)


def resolve_weights(weights, names) -> Dict[str, Optional[str]]:
    """The weights of each backbone in ``names`` from a spec (see :func:`parse_weights`).

    A dict leaves backbones it does not name at ``"imagenet"``; one weights file is
    accepted only for a single backbone.
    """
    spec = parse_weights(weights)
    if isinstance(spec, dict):
        unknown = [name for name in spec if name not in names]
        if unknown:
            raise ValueError(
                f"Received weights for {unknown}, which are not among the backbones {list(names)}; "
                f"expected weights for those backbones only."
            )
        return {name: spec.get(name, "imagenet") for name in names}
    if weights_kind(spec) == "file" and len(names) > 1:
        raise ValueError(
            f"Received one weights file weights={spec!r} for {len(names)} backbones ({', '.join(names)}); "
            "expected one backbone, or one file per backbone: on the command line "
            "--weights ResNet50=resnet.h5,Xception=imagenet (Python: a dict, "
            "weights={'ResNet50': 'resnet.h5', 'Xception': 'imagenet'})."
        )
    return {name: spec for name in names}


def weights_to_text(spec):
    """The JSON/TOML form of a parsed weights spec: ``None`` -> ``"none"`` (dicts per entry)."""
    if isinstance(spec, dict):
        return {name: weights_to_text(v) for name, v in spec.items()}
    return "none" if spec is None else str(spec)


def weights_identity(weights) -> str:
    """A string that changes whenever the weights change (file content hash for local files).

    This is the rule of ``keras.applications`` backbones; each spec's own
    ``spec.weights_identity(weights)`` is the one to use (``hub:`` presets name their version).
    """
    kind = weights_kind(weights)
    if kind == "none":
        return f"random-init:seed={RANDOM_INIT_SEED}"
    if kind == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file not found. Received: weights={str(weights)!r}; expected {WEIGHTS_EXPECTED}."
        )
    return f"file:sha256={sha256_file(path)}"


def keras_models_dir() -> str:
    """Where Keras looks for downloaded application weights (``$KERAS_HOME/models``, else ``~/.keras/models``)."""
    home = os.environ.get("KERAS_HOME")
    return os.path.join(home, "models") + os.sep if home else "~/.keras/models/"


class WeightsDownloadError(RuntimeError):
    """Pretrained weights could not be obtained (typically: no internet).

    Attributes
    ----------
    backbone : str
        The backbone's name.
    cause : BaseException
        What the download raised (not chained, so the message stays readable).
    """

    def __init__(self, backbone: str, cause: BaseException, what: str = "the ImageNet weights",
                 remedy: str = ""):
        self.backbone = backbone
        self.cause = cause
        first = str(cause).splitlines()[0] if str(cause) else ""
        super().__init__(
            f"Could not download {what} for {backbone} ({type(cause).__name__}: {first}).\n"
            "This machine probably has no internet access. Either:\n"
            f"{remedy}"
            "  * use weights=None (CLI: --weights none) for randomly initialised backbones "
            "(useful only for testing the pipeline)."
        )


def imagenet_remedy(backbone: str, file_name: str, url: str) -> str:
    """The how-to-get-it-offline lines of an ImageNet :class:`WeightsDownloadError`."""
    example = f"/path/to/{file_name}"
    return (
        f"  * download {file_name} (from {url}) on a machine that has internet and copy it into "
        f"{keras_models_dir()} (where Keras looks for it, under that name), then run again; or\n"
        f"  * pass its path: on the command line --weights {backbone}={example} (several backbones: "
        f"NAME=PATH,NAME=PATH,...), in a run config weights = {{ \"{backbone}\" = \"{example}\" }}, "
        f"in Python weights={{{backbone!r}: {example!r}}}; or\n"
    )
