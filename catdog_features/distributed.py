"""Distributors: run independent tasks locally or as Apache Spark tasks.

A distributor only decides where each task runs (clip-retrieval's split): the stages plan their
work as plain data (file paths, content hashes, settings; never arrays or Keras objects),
hand one payload per task to :func:`run_tasks`, and commit what comes back. Tasks must be
idempotent: Spark retries failed tasks and may run speculative copies.

Spark is used through an active ``SparkSession`` when there is one (``spark-submit``, a
notebook on a cluster); otherwise one is created for ``master`` (default ``local[*]``).
pyspark is imported only here and only when Spark is asked for (``pip install -e ".[spark]"``;
Spark needs a Java 17+ runtime).
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from typing import Any, Callable, List, Optional, Sequence

DISTRIBUTORS = ("local", "spark")


def check_distributor(value) -> str:
    """``value`` if it is a known distributor name, else a ValueError listing them."""
    if value not in DISTRIBUTORS:
        raise ValueError(f"Unknown distributor. Received: distributor={value!r}; expected one of {DISTRIBUTORS}.")
    return value


def spark_session(master: Optional[str] = None, app_name: str = "catdog-features"):
    """The active SparkSession, or a new one for ``master`` (``local[*]`` when None).

    Raises
    ------
    ImportError
        pyspark is not installed (with how to install it).
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ImportError(
            "distributor='spark' needs pyspark, which is not installed: pip install -e \".[spark]\" "
            "(and a Java 17+ runtime, e.g. apt-get install openjdk-17-jre-headless)."
        ) from None
    active = SparkSession.getActiveSession()
    if active is not None and (master is None or active.sparkContext.master == master):
        return active
    if (master or "local").startswith("local"):
        # Local executors run on this machine: use this interpreter (its virtual environment),
        # not whatever `python3` is first on PATH. On a cluster, PYSPARK_PYTHON is the user's.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (SparkSession.builder.appName(app_name).master(master or "local[*]")
               .config("spark.ui.showConsoleProgress", "false"))
    return builder.getOrCreate()


def run_tasks(func: Callable[[Any], Any], payloads: Sequence[Any], *, spark=None, master: Optional[str] = None,
              desc: str = "tasks", progress: bool = True, unit: str = "task") -> List[Any]:
    """Run ``func(payload)`` for every payload as one Spark task each; results in payload order.

    ``func`` must be importable on the executors (a module-level function of this package). A
    progress bar on the driver counts finished tasks, with an ETA.
    """
    from tqdm.auto import tqdm

    payloads = list(payloads)
    if not payloads:
        return []
    spark = spark or spark_session(master)
    sc = spark.sparkContext
    group = f"catdog-features-{uuid.uuid4().hex[:12]}"
    rdd = sc.parallelize(list(enumerate(payloads)), len(payloads))
    out: dict = {}
    errors: list = []

    def collect():
        sc.setJobGroup(group, desc, interruptOnCancel=True)
        try:
            out["results"] = rdd.map(lambda item: (item[0], func(item[1]))).collect()
        except BaseException as exc:  # re-raised in the driver thread
            errors.append(exc)

    try:
        from pyspark import InheritableThread
        worker = InheritableThread(target=collect, daemon=True)
    except ImportError:  # pragma: no cover - older pyspark
        worker = threading.Thread(target=collect, daemon=True)
    worker.start()
    with tqdm(total=len(payloads), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True) as bar:
        try:
            while worker.is_alive():
                worker.join(0.5)
                done = _finished_tasks(sc, group)
                if done > bar.n:
                    bar.update(done - bar.n)
        except KeyboardInterrupt:
            sc.cancelJobGroup(group)
            raise
        bar.update(len(payloads) - bar.n if not errors else 0)
    if errors:
        raise errors[0]
    return [result for _, result in sorted(out["results"], key=lambda kv: kv[0])]


def _finished_tasks(sc, group: str) -> int:
    tracker = sc.statusTracker()
    done = 0
    for job_id in tracker.getJobIdsForGroup(group):
        job = tracker.getJobInfo(job_id)
        for stage_id in (job.stageIds if job else []):
            stage = tracker.getStageInfo(stage_id)
            if stage is not None:
                done += stage.numCompletedTasks
    return done


def task_attempt() -> int:
    """The Spark attempt number of the running task (0 outside Spark)."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return 0
    ctx = TaskContext.get()
    return 0 if ctx is None else int(ctx.attemptNumber())


def use_task_gpus() -> None:
    """Pin TensorFlow to the GPUs Spark assigned to this task, with memory growth on.

    With ``spark.task.resource.gpu.amount=1`` every task gets its own GPU address. This must
    run before TensorFlow is imported in the worker (Python workers are reused across tasks,
    so later tasks keep the first pinning: run one executor per GPU).
    """
    try:
        from pyspark import TaskContext
        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None
    except Exception:  # not in Spark, or no resource information
        gpus = None
    if gpus is not None and "tensorflow" not in sys.modules:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus.addresses)
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by an earlier task in this worker
            pass

