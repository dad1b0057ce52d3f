"""Running one job where a launcher put it (a local process or a submitit task): every message,
warning and traceback goes to the job's log file, and the result says what happened."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from ..messages import show_messages
from ..provenance import now_utc
from ..validation import VlmprobeError
from .stages import RUNS, Work

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _output_to(path: Path):
    """Standard output and error (file descriptors 1 and 2, so library and C output too) appended
    to ``path`` while the job runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _rank() -> int:
    """This task's rank in a job of several tasks (submitit: one task per GPU), after exporting
    the variables sharded extraction reads (RANK, WORLD_SIZE, LOCAL_RANK)."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return 0
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks <= 1:
        return 0
    # GPUs stay as the cluster made them visible: extraction picks cuda:<LOCAL_RANK> itself
    return TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                overwrite=True).rank


def run_job(work: Work) -> dict:
    """Run ``work`` here; never raises for a failing job (its reason and log say why)."""
    rank = _rank()
    path = work.log if rank == 0 else work.log.with_name(f"{work.log.stem}.rank{rank}.log")
    started, t0 = now_utc(), time.perf_counter()
    with _output_to(path):
        show_messages("INFO")
        logging.captureWarnings(True)
        log.info(f"{started} {work.id} (pid {os.getpid()}, rank {rank})")
        try:
            outputs, status, reason = RUNS[work.stage](work), "done", ""
            if outputs.get("status") == "up to date":
                status, reason = "skipped", "cache up to date"
        except VlmprobeError as e:
            outputs, status, reason = {}, "failed", str(e)
            log.error(reason)
        except Exception as e:  # noqa: BLE001 - one failing job must not stop the study
            outputs, status, reason = {}, "failed", f"{type(e).__name__}: {e}"
            traceback.print_exc()
        seconds = time.perf_counter() - t0
        log.info(f"{work.id}: {status} in {seconds:.1f} s" + (f": {reason}" if reason else ""))
    return {"status": status, "reason": reason, "outputs": outputs, "started": started,
            "finished": now_utc(), "duration_s": round(seconds, 2), "log": str(path)}


def run_local(work: Work, conn, env: dict, cwd: str, threads: int) -> None:
    """A local launcher's process: the coordinator's environment and folder, then the job."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        conn.send(run_job(work))
    except (BrokenPipeError, EOFError):
        pass  # the coordinator is gone; the job's files and log are written
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches every process of the terminal; the coordinator records it
    finally:
        conn.close()
