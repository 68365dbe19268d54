"""Distributors: run independent tasks locally or as Apache Spark tasks.

A distributor only decides where each task runs (clip-retrieval's split): the stages plan their
work as plain data (file paths, content hashes, settings; never arrays or Keras objects),
hand one payload per task to :func:`run_tasks`, and commit what comes back. Tasks must be
idempotent: Spark retries failed tasks and may run speculative copies.

Spark is used through an active ``SparkSession`` when there is one (``spark-submit``, a
notebook on a cluster); otherwise one is created for ``master`` (default ``local[*]``).
pyspark is imported only here and only when Spark is asked for (``pip install -e ".[spark]"``;
Spark needs a Java 17+ runtime).

Two shapes of work:

* :func:`run_tasks`: a known list of payloads, one Spark job (stage 1's partitions);
* :class:`TaskPool`: tasks submitted one at a time while earlier ones run, each giving a
  :class:`concurrent.futures.Future` (stage 2: TPE suggests the next trial when one finishes).
  ``n_jobs=1`` runs each task in this process as it is submitted; ``"local"`` with more jobs
  uses spawned worker processes, each with ``cores // n_jobs`` BLAS and TensorFlow threads so
  the processes don't oversubscribe the cores; ``"spark"`` runs every task as a one-task Spark
  job, up to ``n_jobs`` at once (Spark's scheduler places them).
"""

from __future__ import annotations

import concurrent.futures as _futures
import os
import sys
import threading
import time
import uuid
from typing import Any, Callable, List, Optional, Sequence

DISTRIBUTORS = ("local", "spark")


def check_distributor(value) -> str:
    """``value`` if it is a known distributor name, else a ValueError listing them."""
    if value not in DISTRIBUTORS:
        raise ValueError(f"Unknown distributor. Received: distributor={value!r}; expected one of {DISTRIBUTORS}.")
    return value


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_jobs(n_jobs) -> int:
    """``n_jobs`` as a count: an int >= 1, or -1 for one per available core."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or (n_jobs < 1 and n_jobs != -1):
        raise ValueError(f"Received n_jobs={n_jobs!r}; expected an int >= 1, or -1 for one job per core.")
    return available_cores() if n_jobs == -1 else int(n_jobs)


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



# ---------------------------------------------------------------------------------------------
# TaskPool: tasks submitted while others run (parallel trials, parallel fold fits)


class WorkerDiedError(RuntimeError):
    """The process running a task died (killed, out of memory, a crash in native code)."""


_limits = []  # keeps a worker's threadpoolctl limits alive


def limit_threads(n_threads: int) -> None:
    """Size this process' BLAS pools and TensorFlow's (if not yet started) to ``n_threads``."""
    n_threads = max(1, int(n_threads))
    for var, value in _thread_env(n_threads).items():
        if var != "TF_CPP_MIN_LOG_LEVEL":
            os.environ[var] = value
    from threadpoolctl import threadpool_limits

    _limits.append(threadpool_limits(limits=n_threads))
    if "tensorflow" in sys.modules:  # already running: too late for its pools, harmless to try
        try:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(n_threads)
        except RuntimeError:
            pass


def _thread_env(n_threads: int) -> dict:
    n = str(max(1, int(n_threads)))
    return {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n,
            "TF_NUM_INTEROP_THREADS": "1" if n == "1" else "2", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _exit_with_parent(parent_pid: int) -> None:
    """A worker ends when the process that started it is gone (kill -9 of the driver)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _init_worker(n_threads: int, parent_pid: int) -> None:
    limit_threads(n_threads)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _spark_call(func, payload):
    """One Spark task: size the threads to the task's CPUs, then run ``func(payload)``."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        cpus = int(ctx.cpus()) if ctx is not None else 1
    except Exception:  # noqa: BLE001 - outside Spark or an older pyspark
        cpus = 1
    if not _limits:
        limit_threads(cpus)
    return func(payload)


class TaskPool:
    """Run ``func(payload)`` tasks, up to ``n_jobs`` at once, here, in processes or on Spark.

    Parameters
    ----------
    n_jobs : int
        Tasks at once (-1: one per available core; with Spark: the cluster's default parallelism).
    distributor : {"local", "spark"}
        Where tasks run. ``func`` must be a module-level function and ``payload`` picklable.
    spark_master : str, optional
        Spark master URL when no SparkSession is active (default ``local[*]``).
    threads_per_job : int, optional
        BLAS/TensorFlow threads of each local worker process (default ``cores // n_jobs``).

    Use as a context manager: leaving it stops the workers (running tasks are abandoned).
    """

    def __init__(self, n_jobs: int = 1, distributor: str = "local", spark_master: Optional[str] = None,
                 threads_per_job: Optional[int] = None):
        check_distributor(distributor)
        self.distributor = distributor
        self._spark = None
        if distributor == "spark":
            self._spark = spark_session(spark_master)
            self.n_jobs = (int(self._spark.sparkContext.defaultParallelism) if n_jobs == -1
                           else resolve_jobs(n_jobs))
        else:
            self.n_jobs = resolve_jobs(n_jobs)
        self.threads_per_job = threads_per_job or max(1, available_cores() // self.n_jobs)
        self._executor = None

    @property
    def inline(self) -> bool:
        """True when tasks run in this process, one after another, as they are submitted."""
        return self.distributor == "local" and self.n_jobs == 1

    def __enter__(self) -> "TaskPool":
        if self.distributor == "spark":
            self._executor = _futures.ThreadPoolExecutor(max_workers=self.n_jobs, thread_name_prefix="spark-task")
        elif not self.inline:
            # loky (joblib's process pool): fresh interpreters, not forks (TensorFlow's and
            # OpenBLAS' threads do not survive a fork), and no `if __name__ == "__main__"`
            # needed in the user's script; thread counts set before the workers import anything
            from joblib.externals.loky.process_executor import ProcessPoolExecutor

            self._executor = ProcessPoolExecutor(
                max_workers=self.n_jobs, initializer=_init_worker, initargs=(self.threads_per_job, os.getpid()),
                env=_thread_env(self.threads_per_job))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, func: Callable[[Any], Any], payload: Any) -> _futures.Future:
        """Start ``func(payload)``; its Future (already done when the pool is inline)."""
        if self.inline:
            future: _futures.Future = _futures.Future()
            try:
                future.set_result(func(payload))
            except Exception as exc:  # noqa: BLE001 - delivered through the future, as in a pool
                future.set_exception(exc)
            return future
        if self._executor is None:
            raise RuntimeError("TaskPool.submit outside its `with` block.")
        if self.distributor == "spark":
            return self._executor.submit(self._run_on_spark, func, payload)
        from joblib.externals.loky.process_executor import BrokenProcessPool

        try:
            return self._executor.submit(func, payload)
        except BrokenProcessPool:
            # a worker died (its tasks' futures say so): later tasks get fresh workers
            self.close()
            self.__enter__()
            return self._executor.submit(func, payload)

    def _run_on_spark(self, func, payload):
        sc = self._spark.sparkContext
        return sc.parallelize([payload], 1).map(lambda p: _spark_call(func, p)).collect()[0]

    def close(self) -> None:
        """Stop the workers; tasks not finished are abandoned (their results never arrive)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if self.distributor == "local":
            processes = list(getattr(executor, "_processes", {}).values())
            executor.shutdown(wait=False, kill_workers=True)
            for proc in processes:  # a running fit would otherwise finish first
                if proc.is_alive():
                    proc.terminate()
            for proc in processes:
                proc.join(5)
        else:
            executor.shutdown(wait=False, cancel_futures=True)


def task_error(future: _futures.Future) -> Optional[BaseException]:
    """The exception of a finished task; a dead worker process becomes :class:`WorkerDiedError`."""
    exc = future.exception()
    broken = [_futures.process.BrokenProcessPool]
    if "joblib" in sys.modules:
        from joblib.externals.loky.process_executor import BrokenProcessPool

        broken.append(BrokenProcessPool)
    if isinstance(exc, tuple(broken)):
        return WorkerDiedError(f"the worker process running this task died ({exc})")
    return exc
