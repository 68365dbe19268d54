"""The training engine of :class:`~catdog_features.heads.DenseHead`: one traced step per architecture.

Keras' ``Model.fit`` costs about 0.5 s per fit (model build, compile, tracing the train and
test functions, tf.data set-up) plus ~80 ms per epoch (callbacks, iterator, evaluation), which
dominates a sweep of small heads. Here a head is a handful of TensorFlow variables and one
``tf.function`` step traced once per *architecture* (features, hidden units, outputs,
optimizer) and reused by every later fit of that architecture in the process: a fit resets
the variables and optimizer slots and feeds its hyperparameters (learning rate, momentum,
L2, dropout rate, seeds) as tensors, so nothing is re-traced.

Everything random is explicit: the initial weights come from the caller (NumPy, seeded),
dropout masks are ``tf.random.stateless_uniform`` draws keyed by ``(seed, step)``, and the
batch order is chosen by the caller. No global random state (NumPy, Python, TensorFlow,
Keras) is read, so a fit's result depends only on its data, hyperparameters and seeds, and a
fit on a reused step equals a fit on a freshly traced one.

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


@dataclass(frozen=True)
class Architecture:
    """What fixes the shapes and the traced computation of a head's training step."""

    n_features: int
    hidden_units: int  # 0: no hidden layer
    n_outputs: int  # 1: sigmoid (binary), else softmax
    optimizer: str

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


class Step:
    """Variables, optimizer slots and the traced training step of one :class:`Architecture`."""

    def __init__(self, arch: Architecture):
        import tensorflow as tf

        self.arch = arch
        self.params = [tf.Variable(np.zeros(s, np.float32), trainable=False) for s in arch.shapes()]
        n_slots = {"sgd": 1, "adam": 2, "adadelta": 2}[arch.optimizer]
        self.slots = [[tf.Variable(np.zeros(s, np.float32), trainable=False) for s in arch.shapes()]
                      for _ in range(n_slots)]
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        y_dtype = tf.float32 if arch.n_outputs == 1 else tf.int32
        self._epoch = tf.function(
            self._run_steps,
            input_signature=[
                tf.TensorSpec([None, arch.n_features], tf.float32),  # rows to gather from
                tf.TensorSpec([None], y_dtype),
                tf.TensorSpec([None], tf.int64),  # row positions, in step order
                tf.TensorSpec([None], tf.float32),  # learning rate of each step
                tf.TensorSpec([3], tf.float32),  # momentum, l2, dropout
                tf.TensorSpec([], tf.int64),  # optimizer step count before the first step
                tf.TensorSpec([], tf.int64),  # dropout seed
                tf.TensorSpec([], tf.int64),  # batch size
            ],
        ).get_concrete_function()

    # ------------------------------------------------------------------ state
    def reset(self, weights: Sequence[np.ndarray]) -> None:
        """Start a new fit: these weights, zero optimizer slots."""
        for var, value in zip(self.params, weights):
            var.assign(value)
        for slot in self.slots:
            for var in slot:
                var.assign(np.zeros(var.shape, np.float32))
        self.loss_sum.assign(0.0)

    def weights(self) -> List[np.ndarray]:
        """Copies of the current weights."""
        return [np.array(v.numpy(), copy=True) for v in self.params]

    def take_loss_sum(self) -> float:
        """Sum of (batch loss x batch rows) since the last call (the data term, without L2)."""
        value = float(self.loss_sum.numpy())
        self.loss_sum.assign(0.0)
        return value

    # ------------------------------------------------------------------ steps
    def train(self, X, y, rows, lrs, momentum, l2, dropout, t0, seed, batch_size) -> None:
        """``len(lrs)`` optimizer steps on consecutive ``batch_size`` slices of ``rows`` of ``(X, y)``.

        ``X``/``y`` are tensors (see :meth:`as_tensors`) or arrays; step ``t0 + i`` uses
        ``lrs[i]`` and dropout masks keyed by ``(seed, t0 + i)``.
        """
        import tensorflow as tf

        self._epoch(
            X if isinstance(X, tf.Tensor) else tf.convert_to_tensor(X),
            y if isinstance(y, tf.Tensor) else tf.convert_to_tensor(y),
            tf.convert_to_tensor(np.asarray(rows, dtype=np.int64)),
            tf.convert_to_tensor(np.asarray(lrs, dtype=np.float32)),
            tf.convert_to_tensor(np.array([momentum, l2, dropout], dtype=np.float32)),
            tf.constant(int(t0), tf.int64), tf.constant(int(seed), tf.int64), tf.constant(int(batch_size), tf.int64),
        )

    def _run_steps(self, X, y, rows, lrs, hyper, t0, seed, batch_size):
        import tensorflow as tf

        n = tf.shape(rows, out_type=tf.int64)[0]

        def body(i):
            idx = rows[i * batch_size : tf.minimum((i + 1) * batch_size, n)]
            t = t0 + i
            self._train_step(tf.gather(X, idx), tf.gather(y, idx), lrs[i], hyper[0], hyper[1], hyper[2],
                             tf.cast(t, tf.float32), tf.stack([seed, t]))
            return (i + 1,)

        tf.while_loop(lambda i: i < tf.shape(lrs, out_type=tf.int64)[0], body, (tf.constant(0, tf.int64),))

    def _train_step(self, xb, yb, lr, momentum, l2, dropout, iteration, seed):
        import tensorflow as tf

        arch = self.arch
        with tf.GradientTape() as tape:
            tape.watch(self.params)
            x = _dropout(xb, dropout, seed)
            n_layers = len(self.params) // 2
            for k in range(n_layers):
                x = tf.matmul(x, self.params[2 * k]) + self.params[2 * k + 1]
                if k < n_layers - 1:
                    x = _dropout(tf.nn.relu(x), dropout, seed + tf.constant([1, 0], tf.int64))
            if arch.n_outputs == 1:
                per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=yb, logits=x[:, 0])
            else:
                per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=x)
            data_loss = tf.reduce_mean(per_row)
            penalty = tf.add_n([tf.reduce_sum(tf.square(self.params[2 * k])) for k in range(n_layers)])
            loss = data_loss + l2 * penalty  # Keras' L2 kernel regulariser: l2 * sum(W**2)
        grads = tape.gradient(loss, self.params)
        self.loss_sum.assign_add(tf.cast(data_loss, tf.float64) * tf.cast(tf.shape(xb)[0], tf.float64))
        for k, (var, grad) in enumerate(zip(self.params, grads)):
            self._update(k, var, grad, lr, momentum, iteration)

    def _update(self, k, var, grad, lr, momentum, iteration):
        import tensorflow as tf

        opt = self.arch.optimizer
        if opt == "sgd":  # Keras SGD: m = momentum * m - lr * g; w += m (== w - lr * g when momentum is 0)
            m = self.slots[0][k]
            m.assign(m * momentum - grad * lr)
            var.assign_add(m)
        elif opt == "adam":
            m, v = self.slots[0][k], self.slots[1][k]
            t = iteration + 1.0
            alpha = lr * tf.sqrt(1.0 - tf.pow(ADAM_BETA_2, t)) / (1.0 - tf.pow(ADAM_BETA_1, t))
            m.assign_add((grad - m) * (1.0 - ADAM_BETA_1))
            v.assign_add((tf.square(grad) - v) * (1.0 - ADAM_BETA_2))
            var.assign_sub(m * alpha / (tf.sqrt(v) + ADAM_EPSILON))
        else:  # adadelta, Keras' formula
            acc_g, acc_d = self.slots[0][k], self.slots[1][k]
            acc_g.assign(ADADELTA_RHO * acc_g + (1.0 - ADADELTA_RHO) * tf.square(grad))
            delta = -tf.sqrt(acc_d + ADADELTA_EPSILON) * grad / tf.sqrt(acc_g + ADADELTA_EPSILON)
            acc_d.assign(ADADELTA_RHO * acc_d + (1.0 - ADADELTA_RHO) * tf.square(delta))
            var.assign_add(lr * delta)


def _dropout(x, rate, seed):
    """Inverted dropout with a stateless mask keyed by ``seed``; the identity (no draw) when ``rate`` is 0.

    The mask compares full-range random int32s with ``rate`` scaled to that range: one draw per
    value, ~2x cheaper on CPU than uniform floats and a ``where``.
    """
    import tensorflow as tf

    def drop():
        bits = tf.random.stateless_uniform(tf.shape(x), seed=seed, minval=None, maxval=None, dtype=tf.int32)
        threshold = tf.cast(tf.cast(rate, tf.float64) * 4294967296.0 - 2147483648.0, tf.int32)
        keep = tf.cast(bits >= threshold, x.dtype)
        return x * (keep / (1.0 - rate))

    return tf.cond(rate > 0.0, drop, lambda: x)


class _Pool:
    """Free :class:`Step` objects by architecture; a checked-out step belongs to one fit."""

    def __init__(self, size: int):
        self.size = size
        self._free: "collections.OrderedDict[Architecture, List[Step]]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self.built = 0

    def take(self, arch: Architecture) -> Step:
        with self._lock:
            free = self._free.get(arch)
            if free:
                self._free.move_to_end(arch)
                return free.pop()
            self.built += 1
        return Step(arch)

    def give(self, step: Step) -> None:
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
        self.step: Optional[Step] = None

    def __enter__(self) -> Step:
        self.step = POOL.take(self.arch) if self.reuse else Step(self.arch)
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

    def __init__(self, X, y, batch_size: int, mean, scale):
        import tensorflow as tf

        self.X, self.y, self.batch_size, self.mean, self.scale = X, y, batch_size, mean, scale
        self.resident = X.nbytes <= RESIDENT_BYTES
        if self.resident:
            self.Xt, self.yt = tf.convert_to_tensor(self.standardized(X)), tf.convert_to_tensor(y)
        rows = max(1, _CHUNK_BYTES // max(1, X.shape[1] * 4 * batch_size))
        self.chunk_rows = rows * batch_size  # whole batches per chunk

    def standardized(self, X):
        return X if self.mean is None else (X - self.mean) / self.scale

    def epoch(self, step: Step, order, lrs, s: "LoopSettings", t0: int, seed: int) -> None:
        bs = self.batch_size
        if self.resident:
            step.train(self.Xt, self.yt, order, lrs, s.momentum, s.l2, s.dropout, t0, seed, bs)
            return
        for start in range(0, len(order), self.chunk_rows):
            rows = order[start : start + self.chunk_rows]
            first = start // bs
            step.train(self.standardized(self.X[rows]), self.y[rows], np.arange(len(rows)), lrs[first : first + -(-len(rows) // bs)],
                       s.momentum, s.l2, s.dropout, t0 + first, seed, bs)


def run_loop(step: Step, X, y_fit, train_idx, val, settings: LoopSettings, schedule: Schedule,
             rng: np.random.Generator, dropout_seed: int, mean=None, scale=None) -> LoopResult:
    """Train ``step`` (already reset) for up to ``settings.epochs`` epochs.

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
    feed = _Feeder(X, y_fit, s.batch_size, mean, scale)
    t = 0
    for epoch in range(s.epochs):
        order = rng.permutation(train_idx)
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
