"""The training engine of :class:`~catdog_features.heads.DenseHead`: steps reused per architecture.

Keras' ``Model.fit`` costs about 0.5 s per fit (model build, compile, tracing the train and
test functions, tf.data set-up) plus ~80 ms per epoch (callbacks, iterator, evaluation), which
dominates a sweep of small heads. Here a head is a handful of weight arrays and a *step*, built
once per *architecture* (features, hidden units, outputs, optimizer) and reused by every later
fit of that architecture in the process (a fit resets weights and optimizer slots):

* :class:`~catdog_features.heads.step_numpy.NumpyStep` for small networks (up to
  :data:`NUMPY_MAX_WEIGHTS` weights): tens of microseconds per optimizer step;
* :class:`~catdog_features.heads.step_tf.TFStep` for the rest: TensorFlow variables and one
  ``tf.function`` (a while loop over an epoch's steps) traced once; hyperparameters are fed as
  tensors, so nothing is re-traced.

Everything random is explicit: the initial weights come from the caller (NumPy, seeded),
dropout masks from the fit's dropout seed, and the batch order is chosen by the caller. No
global random state (NumPy, Python, TensorFlow, Keras) is read, so a fit's result depends only
on its data, hyperparameters and seeds, and a fit on a reused step equals a fit on a fresh one.

The optimizers implement Keras 3's update rules (SGD with momentum, Adam, Adadelta with
Keras 2's rho/epsilon) on plain variables. Checked-out steps are exclusive (a thread-safe
pool), so heads can be fitted concurrently in threads.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

OPTIMIZERS = ("adadelta", "sgd", "adam")

# Keras' defaults (Adam) and Keras 2's Adadelta settings, which the reference recipe used.
ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-7
ADADELTA_RHO, ADADELTA_EPSILON = 0.95, 1e-7

#: Architectures whose traced step is kept for reuse (least recently used dropped first).
POOL_SIZE = 16
#: Networks with up to this many weights train on the NumPy step (see :func:`make_step`).
NUMPY_MAX_WEIGHTS = 2**16


@dataclass(frozen=True)
class Architecture:
    """What fixes the shapes and the traced computation of a head's training step."""

    n_features: int
    hidden_units: int  # 0: no hidden layer
    n_outputs: int  # 1: sigmoid (binary), else softmax
    optimizer: str

    @property
    def n_weights(self) -> int:
        return int(sum(np.prod(shape) for shape in self.shapes()))

    def shapes(self) -> List[tuple]:
        """Shapes of the trainable variables, in order: kernel, bias per Dense layer."""
        dims = [self.n_features] + ([self.hidden_units] if self.hidden_units else []) + [self.n_outputs]
        out = []
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            out += [(fan_in, fan_out), (fan_out,)]
        return out


def glorot_uniform(rng: np.random.Generator, arch: Architecture) -> List[np.ndarray]:
    """Initial weights: Glorot-uniform kernels (Keras' default), zero biases, float32."""
    weights = []
    for shape in arch.shapes():
        if len(shape) == 2:
            limit = np.sqrt(6.0 / (shape[0] + shape[1]))
            weights.append(rng.uniform(-limit, limit, size=shape).astype(np.float32))
        else:
            weights.append(np.zeros(shape, dtype=np.float32))
    return weights


def make_step(arch: Architecture):
    """A fresh training step for ``arch``: NumPy for small networks, TensorFlow for the rest.

    Per optimizer step TensorFlow costs ~0.5-1 ms of executor overhead whatever the size, NumPy
    ~30 us plus the arithmetic; up to :data:`NUMPY_MAX_WEIGHTS` weights (every head without a
    hidden layer on up to ~6,000 features and 10 classes, small hidden layers on small inputs)
    the NumPy step is the faster one. The choice depends on the architecture only, so a given
    config always trains on the same engine (same numbers).
    """
    if arch.n_weights <= NUMPY_MAX_WEIGHTS:
        from catdog_features.heads.step_numpy import NumpyStep

        return NumpyStep(arch)
    from catdog_features.heads.step_tf import TFStep

    return TFStep(arch)


class _Pool:
    """Free :class:`Step` objects by architecture; a checked-out step belongs to one fit."""

    def __init__(self, size: int):
        self.size = size
        self._free: "collections.OrderedDict[Architecture, List[object]]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self.built = 0

    def take(self, arch: Architecture):
        with self._lock:
            free = self._free.get(arch)
            if free:
                self._free.move_to_end(arch)
                return free.pop()
            self.built += 1
        return make_step(arch)

    def give(self, step) -> None:
        with self._lock:
            self._free.setdefault(step.arch, []).append(step)
            self._free.move_to_end(step.arch)
            while sum(len(v) for v in self._free.values()) > self.size:
                oldest = next(iter(self._free))
                self._free[oldest].pop(0)
                if not self._free[oldest]:
                    del self._free[oldest]

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


#: Process-wide cache of traced steps. A cache only: results never depend on what it holds.
POOL = _Pool(POOL_SIZE)


class checked_out:
    """``with checked_out(arch) as step:`` a step for this architecture, returned to the pool after."""

    def __init__(self, arch: Architecture, reuse: bool = True):
        self.arch, self.reuse = arch, reuse
        self.step = None

    def __enter__(self):
        self.step = POOL.take(self.arch) if self.reuse else make_step(self.arch)
        return self.step

    def __exit__(self, exc_type, exc, tb):
        if self.reuse and exc_type is None:
            POOL.give(self.step)
        self.step = None
        return False


def forward_logits(X: np.ndarray, weights: Sequence[np.ndarray], mean: Optional[np.ndarray],
                   scale: Optional[np.ndarray]) -> np.ndarray:
    """float32 logits of a trained head (no dropout), in NumPy: predictions need no TensorFlow."""
    x = np.asarray(X, dtype=np.float32)
    if mean is not None:
        x = (x - mean) / scale
    n_layers = len(weights) // 2
    for k in range(n_layers):
        x = x @ weights[2 * k] + weights[2 * k + 1]
        if k < n_layers - 1:
            np.maximum(x, 0.0, out=x)
    return x


def logits_to_proba(logits: np.ndarray) -> np.ndarray:
    """float64 class probabilities from float32 logits: sigmoid for one column, else softmax."""
    z = np.asarray(logits, dtype=np.float64)
    if z.shape[1] == 1:
        p = np.empty_like(z[:, 0])
        pos = z[:, 0] >= 0
        p[pos] = 1.0 / (1.0 + np.exp(-z[pos, 0]))
        e = np.exp(z[~pos, 0])
        p[~pos] = e / (1.0 + e)
        return np.column_stack([1.0 - p, p])
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_loss_from_logits(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of float32 logits against int labels, computed in float64."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if z.shape[1] == 1:
        s = z[:, 0]
        signed = np.where(y == 1, s, -s)
        return float(np.mean(np.logaddexp(0.0, -signed)))
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


# --------------------------------------------------------------------------------------
# learning-rate schedules and the epoch loop
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """The learning rate at optimizer step ``t`` (0-based), before any plateau reduction.

    ``decay``: Keras 2's time-based decay ``lr / (1 + decay * t)``; ``"cosine_restarts"``:
    SGDR as Keras' ``CosineDecayRestarts`` (``first_decay_steps`` = cycle_epochs x steps per
    epoch, ``t_mul`` = cycle_mult, ``m_mul`` = 1, ``alpha`` = 0).
    """

    lr: float
    decay: float = 0.0
    cosine_steps: int = 0  # > 0: SGDR with cycles of this many steps
    cycle_mult: float = 1.0

    def at(self, t: int) -> float:
        if self.cosine_steps:
            fraction = t / self.cosine_steps
            if self.cycle_mult == 1.0:
                restarts = np.floor(fraction)
                fraction -= restarts
            else:
                mult = self.cycle_mult
                restarts = np.floor(np.log(1.0 - fraction * (1.0 - mult)) / np.log(mult))
                done = (1.0 - mult**restarts) / (1.0 - mult)
                fraction = (fraction - done) / mult**restarts
            return float(self.lr * 0.5 * (1.0 + np.cos(np.pi * fraction)))
        if self.decay:
            return float(self.lr / (1.0 + self.decay * t))
        return float(self.lr)


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    patience: int
    batch_size: int
    momentum: float
    l2: float
    dropout: float
    reduce_lr_on_plateau: bool
    verbose: int = 0


@dataclass
class LoopResult:
    weights: List[np.ndarray]
    history: dict
    best_epoch: Optional[int]


_CHUNK_VALUES = 2**22  # values per forward chunk: ~16 MB of float32 stays cache-friendly


def forward_rows(X, rows, weights, mean, scale) -> np.ndarray:
    """:func:`forward_logits` of ``X[rows]`` (all rows when ``rows`` is None), chunked: no copy of X."""
    n = len(X) if rows is None else len(rows)
    step = max(64, _CHUNK_VALUES // max(1, X.shape[1]))
    parts = []
    for start in range(0, n, step):
        block = X[start : start + step] if rows is None else X[rows[start : start + step]]
        parts.append(forward_logits(block, weights, mean, scale))
    n_out = weights[-1].shape[0]
    return np.concatenate(parts) if parts else np.zeros((0, n_out), np.float32)


#: Up to this many bytes of features, a fit copies them into one TensorFlow tensor and each
#: epoch is one call of the traced loop (gathering batches in-graph); larger matrices are fed
#: in row chunks of about :data:`_CHUNK_BYTES`, gathered by NumPy. Same batches, same maths.
RESIDENT_BYTES = 256 * 2**20
_CHUNK_BYTES = 32 * 2**20


class _Feeder:
    """Feeds an epoch's batches to :meth:`Step.train`: the whole matrix resident, or in chunks."""

    def __init__(self, step, X, y, batch_size: int, mean, scale):
        self.X, self.y, self.batch_size, self.mean, self.scale = X, y, batch_size, mean, scale
        self.resident = X.nbytes <= RESIDENT_BYTES
        if self.resident:
            self.Xt, self.yt = step.prepare(self.standardized(X), y)
        rows = max(1, _CHUNK_BYTES // max(1, X.shape[1] * 4 * batch_size))
        self.chunk_rows = rows * batch_size  # whole batches per chunk

    def standardized(self, X):
        return X if self.mean is None else (X - self.mean) / self.scale

    def epoch(self, step, order, lrs, s: "LoopSettings", t0: int, seed: int) -> None:
        bs = self.batch_size
        if self.resident:
            step.train(self.Xt, self.yt, order, lrs, s.momentum, s.l2, s.dropout, t0, seed, bs)
            return
        for start in range(0, len(order), self.chunk_rows):
            rows = order[start : start + self.chunk_rows]
            first = start // bs
            step.train(self.standardized(self.X[rows]), self.y[rows], np.arange(len(rows)), lrs[first : first + -(-len(rows) // bs)],
                       s.momentum, s.l2, s.dropout, t0 + first, seed, bs)


def run_loop(step, X, y_fit, train_idx, val, settings: LoopSettings, schedule: Schedule,
             rng: np.random.Generator, dropout_seed: int, mean=None, scale=None, n_views: int = 1,
             view_rng: Optional[np.random.Generator] = None) -> LoopResult:
    """Train ``step`` (already reset) for up to ``settings.epochs`` epochs.

    ``n_views`` > 1: ``X`` / ``y_fit`` hold ``n_views`` stacked blocks of the same images
    (row ``r`` of view ``v`` at ``v * len(X) // n_views + r``); ``train_idx`` indexes the
    first block, and each epoch every training image is drawn in one view chosen uniformly
    by ``view_rng`` (augmentation without recomputing features).

    ``mean``/``scale`` (float32, or None) standardise every row the step sees, as
    :func:`forward_logits` does. ``val`` is ``(X_val, rows or None, y_val int)`` or ``None``: with it, early stopping on
    the validation log loss with ``patience`` and the best epoch's weights restored (Keras'
    ``EarlyStopping(restore_best_weights=True)``); ``reduce_lr_on_plateau`` halves the rate
    after ``max(1, patience // 2)`` epochs without an improvement of 1e-4 in the monitored
    loss (Keras' ``ReduceLROnPlateau`` defaults), down to 1e-6 x the start rate.
    """
    s = settings
    n_train = len(train_idx)
    history = {"loss": [], "lr": []}
    if val is not None:
        history["val_loss"] = []
    best, best_epoch, best_weights, wait = np.inf, None, None, 0
    plateau_best, plateau_wait, factor = np.inf, 0, 1.0
    plateau_patience = max(1, s.patience // 2)
    feed = _Feeder(step, X, y_fit, s.batch_size, mean, scale)
    t = 0
    for epoch in range(s.epochs):
        order = rng.permutation(train_idx)
        if n_views > 1:
            order = order + (len(X) // n_views) * view_rng.integers(0, n_views, size=len(order))
        n_steps = -(-n_train // s.batch_size)
        lrs = [schedule.at(t + i) * factor for i in range(n_steps)]
        history["lr"].append(lrs[0])
        feed.epoch(step, order, lrs, s, t, dropout_seed)
        t += n_steps
        loss = step.take_loss_sum() / n_train
        history["loss"].append(loss)
        monitored = loss
        if val is not None:
            Xv, rows, yv = val
            weights = step.weights()
            val_loss = log_loss_from_logits(forward_rows(Xv, rows, weights, mean, scale), yv)
            history["val_loss"].append(val_loss)
            monitored = val_loss
            if val_loss < best:
                best, best_epoch, best_weights, wait = val_loss, epoch, weights, 0
            else:
                wait += 1
        if s.verbose:
            shown = f" val_loss {history['val_loss'][-1]:.5f}" if val is not None else ""
            print(f"epoch {epoch + 1}/{s.epochs}: loss {loss:.5f}{shown} lr {history['lr'][-1]:.4g}")
        if not np.isfinite(loss) or (val is not None and not np.isfinite(monitored)):
            break  # diverged: later epochs cannot recover
        if val is not None and wait > 0 and wait >= s.patience:
            break
        if s.reduce_lr_on_plateau:
            if monitored < plateau_best - 1e-4:
                plateau_best, plateau_wait = monitored, 0
            else:
                plateau_wait += 1
                if plateau_wait >= plateau_patience:
                    factor = max(factor * 0.5, 1e-6)
                    plateau_wait = 0
    if best_weights is not None:
        return LoopResult(best_weights, history, best_epoch)
    return LoopResult(step.weights(), history, None)
