"""Where scan-many's audits run: threads on this machine each waiting on one `auditor scan`
subprocess (local), or Ray tasks on an embedded or existing Ray cluster (ray). Both call
on_done(index, outcome) in the calling thread as each audit finishes."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable

from .audit import RUNNING, STOPPING, run_one

OnDone = Callable[[int, dict], None]


def _crashed(exc: BaseException) -> dict:
    return {"exit_code": 2, "verdict": "error", "attempts": 0, "seconds": 0.0, "error": f"{type(exc).__name__}: {exc}"[:500]}


def run_local(jobs: list[dict], workers: int, on_done: OnDone) -> None:
    STOPPING.clear()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan-many")
    try:
        futures = {pool.submit(run_one, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            exc = future.exception()
            on_done(futures[future], _crashed(exc) if exc else future.result())
    except KeyboardInterrupt:
        STOPPING.set()  # no retry and no new audit; end the running ones so none writes after we exit
        for proc in list(RUNNING):
            proc.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ray_cluster(address: str | None):
    """Connect to the cluster at address (or RAY_ADDRESS), else start an embedded one on this
    machine's cores."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return ray


def run_ray(jobs: list[dict], address: str | None, workers: int | None, cpus: float | None, gpus: float,
            on_done: OnDone) -> None:
    """Each audit a Ray task declaring cpus (default: the cluster's CPUs shared by --jobs, else 1) and
    gpus; Ray runs as many at once as the cluster's resources allow, and retries a task whose
    worker dies once (max_retries=1)."""
    ray = ray_cluster(address)
    pending: dict = {}
    try:
        if cpus is None:
            total = ray.cluster_resources().get("CPU", 1)
            cpus = max(1, int(total // workers)) if workers else 1
        task = ray.remote(run_one).options(num_cpus=cpus, num_gpus=gpus, max_retries=1)
        for i, job in enumerate(jobs):
            pending[task.remote({**job, "threads": max(1, int(cpus)), "ship": True, "die_with_parent": True})] = i
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the worker died twice, or the task could not be scheduled
                    outcome = _crashed(exc)
                on_done(i, outcome)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        ray.shutdown()  # stops the embedded cluster; only disconnects from an existing one
