"""Where a study's jobs run. ``local``: each job in its own process on this machine (a crashed or
killed process fails its job only), ``jobs`` at once. ``slurm``: each job submitted through
submitit with the resources the study file asks per stage; an extraction given several GPUs runs
one task per GPU, each task a shard of the existing sharded extraction. submitit keeps its own
job files (pickles) in ``<out>/submitit``; vlmprobe's outputs stay pickle-free.

Both take ``start(work)``, report finished jobs from ``wait(timeout)`` as (job id, result) and
end what still runs with ``stop()``.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import time

from ..validation import VlmprobeError
from .spec import StudySpec
from .stages import Work
from .worker import run_job, run_local


def failed(work: Work, reason: str, log: str | None = None) -> dict:
    """The result of a job that ended without saying how (its process died, the cluster
    killed it)."""
    return {"status": "failed", "reason": reason, "outputs": {}, "started": None,
            "finished": None, "duration_s": None, "log": log or str(work.log)}


class LocalLauncher:
    name = "local"

    def __init__(self, jobs: int):
        methods = multiprocessing.get_all_start_methods()
        # forkserver: every job forks from a fresh server process that has imported the stages
        # once (fast to start, and never a fork of a process whose threads are running)
        self.context = multiprocessing.get_context("forkserver" if "forkserver" in methods
                                                   else "spawn")
        if self.context.get_start_method() == "forkserver":
            self.context.set_forkserver_preload(["vlmprobe.study.stages"])
        self.jobs = jobs
        # id -> (process, connection, work, [its result, once received], start time)
        self.running: dict[str, tuple] = {}

    def free(self) -> int:
        return self.jobs - len(self.running)

    def start(self, work: Work) -> str:
        receive, send = self.context.Pipe(duplex=False)
        # the cores shared between the jobs; one job at a time: as the environment says
        omp = os.environ.get("OMP_NUM_THREADS", "")
        threads = (max(1, (os.cpu_count() or 1) // self.jobs) if self.jobs > 1
                   else int(omp) if omp.isdigit() else 0)
        process = self.context.Process(target=run_local, name=work.id, args=(
            work, send, dict(os.environ), os.getcwd(), threads))
        process.start()
        send.close()
        self.running[work.id] = (process, receive, work, [], time.time())
        return str(process.pid)

    def wait(self, timeout: float) -> list[tuple[str, dict]]:
        if not self.running:
            return []
        waiting = [x for p, conn, _, got, _ in self.running.values() for x in (
            (p.sentinel,) if got else (p.sentinel, conn))]
        multiprocessing.connection.wait(waiting, timeout)
        done = []
        for job_id, (process, conn, work, got, since) in list(self.running.items()):
            if not got and conn.poll():
                try:
                    got.append(conn.recv())
                except EOFError:
                    got.append(None)
            if process.is_alive():
                continue
            process.join()
            conn.close()
            del self.running[job_id]
            result = got[0] if got else None
            if result is None:
                code = process.exitcode
                how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
                       else f"exit code {code}")
                began = work.log.is_file() and work.log.stat().st_mtime >= since - 1
                result = failed(work, f"its process ended with {how} before reporting (killed, "
                                      "out of memory?); see the log" if began else
                                f"its process ended with {how} before the job began; the error "
                                "is on standard error (a Python script calling run_study needs "
                                "the `if __name__ == '__main__':` guard of multiprocessing)")
            done.append((job_id, result))
        return done

    def stop(self) -> list[str]:
        stopped = list(self.running)
        for process, *_ in self.running.values():
            process.terminate()
        for process, conn, *_ in self.running.values():
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self.running.clear()
        return stopped


class SubmititLauncher:
    """One submitit job per study job; ``cluster`` "slurm", or "local" (submitit's local executor:
    the same code path on one machine, no cluster)."""

    name = "slurm"

    def __init__(self, spec: StudySpec, jobs: int | None):
        try:
            import submitit
        except ImportError:
            raise VlmprobeError('The slurm launcher needs submitit: pip install '
                                '"vlmprobe[cluster]" (or pip install submitit).') from None
        self.jobs = jobs
        self.folder = spec.out / "submitit"
        self.executors = {}
        for stage in spec.stages:  # checked by submitit now, before any job starts
            asked = {**spec.launcher.resources.get("all", {}),
                     **spec.launcher.resources.get(stage, {})}
            params = {"name": f"vlmprobe-{stage}", **asked}
            gpus = params.get("gpus_per_node", 0)
            if stage == "extract" and isinstance(gpus, int) and gpus > 1:
                params.setdefault("tasks_per_node", gpus)  # one shard per GPU
            if spec.launcher.cluster == "local":
                params.setdefault("timeout_min", 24 * 60)  # submitit's local default is 2 min
            where = spec.where("launcher", "resources", *([stage] if stage in spec.launcher.
                                                         resources else []))
            try:
                executor = submitit.AutoExecutor(folder=self.folder / "%j",
                                                 cluster=spec.launcher.cluster)
            except (RuntimeError, ValueError) as e:
                raise VlmprobeError(
                    f"{spec.where('launcher', 'cluster')}: submitit cannot submit to cluster "
                    f"{spec.launcher.cluster!r} from here: {e} Run the study where SLURM is, use "
                    "--launcher local, or 'cluster: local' (submitit's local executor) to try "
                    "the set-up on this machine.") from None
            try:
                executor.update_parameters(**params)
            except (NameError, AssertionError, TypeError, ValueError) as e:
                raise VlmprobeError(f"{where}: submitit refuses the {stage} resources "
                                    f"{asked}: {e}") from None
            self.executors[stage] = executor
        self.running: dict[str, tuple] = {}  # id -> (submitit job, work)

    def free(self) -> int:
        return len(self.running) + 1 if self.jobs is None else self.jobs - len(self.running)

    def start(self, work: Work) -> str:
        job = self.executors[work.stage].submit(run_job, work)
        self.running[work.id] = (job, work)
        return str(job.job_id)

    def wait(self, timeout: float) -> list[tuple[str, dict]]:
        time.sleep(timeout)
        done = []
        for job_id, (job, work) in list(self.running.items()):
            if not job.done():
                continue
            del self.running[job_id]
            try:
                results = job.results()
            except Exception as e:  # noqa: BLE001 - the cluster ended the job (time, memory)
                lines = [x for x in str(e).strip().splitlines() if x.strip()]
                done.append((job_id, failed(work, f"submitit job {job.job_id}: "
                                                  f"{lines[-1] if lines else type(e).__name__}",
                                            str(job.paths.stderr))))
                continue
            done.append((job_id, _one_result(results)))
        return done

    def stop(self) -> list[str]:
        stopped = list(self.running)
        for job, _ in self.running.values():
            job.cancel(check=False)
        self.running.clear()
        return stopped


def _one_result(results: list[dict]) -> dict:
    """One job's result from its tasks' (one per GPU shard): the first failure (with its task's
    log), else the outputs of the task that holds the whole cache (the last shard to finish
    merged them) with rank 0's log and the longest task's time."""
    for r in results:
        if r["status"] == "failed":
            return r
    merged = next((r for r in results if r["outputs"].get("cache")), results[0])
    return {**merged, "log": results[0]["log"], "started": results[0]["started"],
            "duration_s": max(r["duration_s"] for r in results)}


def make_launcher(spec: StudySpec, name: str, jobs: int | None):
    if name == "local":
        return LocalLauncher(jobs or 1)
    if name == "slurm":
        return SubmititLauncher(spec, jobs)
    raise VlmprobeError(f"Unknown launcher {name!r}; use local or slurm.")
