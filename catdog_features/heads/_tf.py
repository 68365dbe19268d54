"""TensorFlow workarounds for training many small heads in one process.

* :func:`released_custom_gradients`: drops the ``CustomGradient-N`` entries that Keras 3's
  optimizer leaves in TensorFlow's process-global gradient registry on every traced train
  step (each one kept a traced graph alive: ~3.5 MB per fitted head).
* :class:`RowSource`: feeds tf.data from NumPy arrays by index without copying the matrix
  into TensorFlow, and unhooks its ``tf.numpy_function`` callables from TF's global graph
  after the fit.

Measured in ``experiments/bench_head_memory.py``.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

_GRADIENTS_LOCK = threading.Lock()
_GRADIENTS_STATE = {"active": 0, "before": frozenset()}


@contextlib.contextmanager
def released_custom_gradients():
    """Drop the gradient functions TensorFlow registers globally while heads train.

    Keras 3's TensorFlow optimizer all-reduces gradients through ``tf.custom_gradient``,
    and every trace of a train step registers a ``CustomGradient-N`` function in TF's
    process-global gradient registry that is never removed; it closes over the traced
    graph, so each fitted model leaked ~3.5 MB (experiments/bench_head_memory.py).
    ``keras.backend.clear_session()`` does not touch that registry. The functions are only
    consulted while a step is being traced, which for a head happens only inside ``fit``,
    so the entries added meanwhile are removed once no head is training any more (heads
    fitting concurrently in threads keep theirs until the last one finishes).
    """
    try:
        from tensorflow.python.framework import ops as tf_ops

        registry = tf_ops._gradient_registry._registry
    except (ImportError, AttributeError):  # pragma: no cover - a TF without this layout
        registry = None
    if registry is not None:
        with _GRADIENTS_LOCK:
            if _GRADIENTS_STATE["active"] == 0:
                _GRADIENTS_STATE["before"] = frozenset(registry)
            _GRADIENTS_STATE["active"] += 1
    try:
        yield
    finally:
        if registry is not None:
            with _GRADIENTS_LOCK:
                _GRADIENTS_STATE["active"] -= 1
                if _GRADIENTS_STATE["active"] == 0:
                    before = _GRADIENTS_STATE["before"]
                    for name in list(registry):
                        if name.startswith("CustomGradient-") and name not in before:
                            registry.pop(name, None)
                    _GRADIENTS_STATE["before"] = frozenset()


def current_lr(optimizer) -> float:
    """The optimizer's learning rate now (a variable, or its schedule at the current step)."""
    value = optimizer.learning_rate
    return float(value.numpy() if hasattr(value, "numpy") else value)



class RowSource:
    """The NumPy arrays a head's tf.data pipelines gather batches from, released after fit.

    ``tf.numpy_function`` called outside a ``tf.function`` (as tf.data map functions are)
    keeps its Python callable alive in TensorFlow's global default graph for the life of
    the process. Going through this holder, what stays behind after :meth:`release` is an
    empty object, not the feature matrix; :meth:`release` also unhooks the callables from
    that graph where TensorFlow's layout allows.
    """

    def __init__(self, X, y):
        self.X = X
        self.y = y

    def gather(self, idx):
        return self.X[idx], self.y[idx]

    def dataset(self, indices, batch_size, shuffle_seed=None, shuffle=False):
        """tf.data pipeline of ``(X[idx], y[idx])`` batches over ``indices``.

        Only the indices live in TensorFlow; rows are gathered from the caller's arrays.
        ``tf.convert_to_tensor(X)`` would copy the whole matrix (twice, transiently:
        TensorFlow copies NumPy input defensively) and a ``shuffle`` buffer of rows would
        hold another copy; this holds none, at the same speed.
        """
        import tensorflow as tf

        n_features = self.X.shape[1]
        y_shape = (None,) + self.y.shape[1:]
        dtypes = (tf.as_dtype(self.X.dtype), tf.as_dtype(self.y.dtype))

        def tf_gather(idx):
            xb, yb = tf.numpy_function(self.gather, [idx], dtypes, stateful=False)
            xb.set_shape((None, n_features))
            yb.set_shape(y_shape)
            return xb, yb

        ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, dtype=np.int64))
        if shuffle:
            # An op-level seed makes the sequence of per-epoch permutations reproducible
            # without touching TensorFlow's global seed; seed=None -> a fresh order each run.
            ds = ds.shuffle(len(indices), seed=shuffle_seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).map(tf_gather).prefetch(2)

    def release(self):
        self.X = self.y = None
        try:
            from tensorflow.python.framework import ops as tf_ops

            graph = tf_ops.get_default_graph()
            funcs = getattr(graph, "_py_funcs_used_in_graph", None)
        except (ImportError, AttributeError):  # pragma: no cover - a TF without this layout
            funcs = None
        if funcs:
            funcs[:] = [f for f in funcs if not self._owns(f)]

    def _owns(self, func):
        for _ in range(8):  # unwrap autograph/decorator wrappers
            if getattr(func, "__self__", None) is self:
                return True
            func = getattr(func, "__wrapped__", None)
            if func is None:
                return False
        return False
