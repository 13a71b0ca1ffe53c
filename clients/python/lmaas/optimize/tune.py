"""tune: measure instance_count x intra-op threads on this machine's cores and record the fastest in the derived
version's config (the artifact is the parent's, unchanged).

Each setting runs ``instance_count`` concurrent single-sample calls on one ORT session with ``threads`` intra-op
threads, as the worker does; the best samples/s wins. Run it on a machine like the workers' (the measurement is of
the cores where it runs). Measured before: the transformer's optimum is two concurrent single-thread calls.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

from lmaas.optimize.base import Job, Made
from lmaas.optimize.evaldata import EvalSet
from lmaas.optimize.measure import session

__all__ = ["concurrent_throughput", "grid", "tune"]


def grid(cores: int) -> list[tuple[int, int]]:
    """(instance_count, threads) pairs that do not oversubscribe ``cores`` by more than 2x."""
    counts = sorted({1, 2, 4, cores} & set(range(1, 2 * cores + 1)))
    return [(i, t) for i in counts for t in sorted({1, 2, cores}) if t <= cores and i * t <= 2 * cores]


def concurrent_throughput(path: str, data: EvalSet, instances: int, threads: int, seconds: float) -> float:
    """Samples/s of ``instances`` threads calling one session (``threads`` intra-op threads) for ``seconds``."""
    sess = session(Path(path), threads)
    names = [o.name for o in sess.get_outputs()]
    feeds = [data.batch(i, 1) for i in range(instances)]
    sess.run(names, feeds[0])
    counts = [0] * instances
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            sess.run(names, feeds[i])
            counts[i] += 1

    start = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(instances)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def tune(job: Job) -> Made:
    cores = int(job.options.get("cores") or os.cpu_count() or 1)
    seconds = float(job.options.get("tune_seconds", 0.5))
    config = json.loads(job.config_json) if job.config_json else {}
    base = (int(config.get("instance_count", 1)), int(config.get("parameters", {}).get("intra_op_threads", 1)))
    results = {(i, t): concurrent_throughput(str(job.src), job.calibration, i, t, seconds) for i, t in grid(cores)}
    if base not in results:
        results[base] = concurrent_throughput(str(job.src), job.calibration, base[0], base[1], seconds)
    (instances, threads), best = max(results.items(), key=lambda kv: kv[1])
    shutil.copyfile(job.src, job.dst)
    config["instance_count"] = instances
    config.setdefault("parameters", {})["intra_op_threads"] = threads
    return Made({"cores": cores, "seconds_per_setting": seconds, "best_instance_count": instances,
                 "best_intra_op_threads": threads, "best_samples_per_s": round(best, 1),
                 "base_samples_per_s": round(results[base], 1),
                 "grid": {f"{i}x{t}": round(r, 1) for (i, t), r in sorted(results.items())}},
                config_json=json.dumps(config, sort_keys=True))
