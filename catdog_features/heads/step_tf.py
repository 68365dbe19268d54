"""The TensorFlow training step of a DenseHead architecture (see :mod:`catdog_features.heads.trainer`).

Variables, optimizer slots and one ``tf.function`` (a ``while`` loop over the steps of an
epoch, gathering batches in-graph) traced once per architecture and reused by every later fit:
a fit resets the variables and feeds its hyperparameters as tensors, so nothing is re-traced.
Dropout masks are ``tf.random.stateless_uniform`` draws keyed by ``(seed, step)``.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from catdog_features.heads.trainer import (
    ADADELTA_EPSILON, ADADELTA_RHO, ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON, Architecture,
)


class TFStep:
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
    @staticmethod
    def prepare(X, y):
        """The matrices a fit trains on, as tensors (copied once per fit)."""
        import tensorflow as tf

        return tf.convert_to_tensor(X), tf.convert_to_tensor(y)

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
