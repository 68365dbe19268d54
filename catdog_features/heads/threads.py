"""BLAS thread limits for small heads.

On a machine whose cores are busy, OpenBLAS' worker threads spin waiting for work: measured on
2 shared cores, a 1,680 x 1,536 ten-class logistic regression took 5.4 s with 2 BLAS threads
and 0.6 s with one (a 1,347 x 64 one 1.2 s vs 0.05 s). Below :data:`SINGLE_THREAD_VALUES`
matrix values a head's NumPy/scikit-learn work runs on one BLAS thread; larger problems keep
the library's default. (TensorFlow's own thread pools are not affected.)
"""

from __future__ import annotations

import contextlib

SINGLE_THREAD_VALUES = 2**25


def blas_threads_for(n_values: int):
    """A context limiting BLAS to one thread when the problem has fewer than :data:`SINGLE_THREAD_VALUES` values."""
    if n_values >= SINGLE_THREAD_VALUES:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
