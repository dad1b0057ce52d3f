"""The coordinator: runs a study's jobs in order on a launcher, each once the jobs it needs have
finished, skipping what an earlier run recorded as done, and keeps the run record and a status
table current; ``plan_study`` says what a run would do and how long it would take."""
from __future__ import annotations

import contextlib
import logging
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ..cache import read_cache_key
from ..cache.chunks import WriterLock
from ..messages import console
from ..provenance import now_utc, provenance
from ..validation import VlmprobeError
from .jobs import Job, plan
from .launchers import make_launcher
from .record import new_record, plain, read_record, record_path, write_record
from .spec import LAUNCHERS, StudySpec, load_study

log = logging.getLogger(__name__)

FINISHED = ("done", "skipped", "failed", "interrupted")
_COLOURS = {"done": "green", "skipped": "cyan", "failed": "bold red", "interrupted": "yellow",
            "running": "bold", "pending": "dim"}


@dataclass
class JobState:
    """Where one job stands in this run."""

    job: Job
    status: str = "pending"  # pending | running | done | skipped | failed | interrupted
    reason: str = ""
    log: str = ""
    duration_s: float | None = None
    outputs: dict = field(default_factory=dict)
    signature: str | None = None  # what its outputs depend on (jobs.Job.signature)
    since: float | None = None  # when it started running (coordinator's clock)


@dataclass
class StudyRun:
    """What :func:`run_study` did: every job's state and the run record's path."""

    spec: StudySpec
    record: Path
    states: list[JobState]
    interrupted: bool = False
    report: Path | None = None  # the study's report (HTML), where the study file asks for one

    @property
    def ok(self) -> bool:
        """Whether every job is done or skipped."""
        return not self.interrupted and all(s.status in ("done", "skipped") for s in self.states)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"job": s.job.id, "stage": s.job.stage, "dataset": s.job.dataset.name,
                              "model": s.job.model, "status": s.status, "reason": s.reason,
                              "log": s.log, "duration_s": s.duration_s} for s in self.states])

    def table(self) -> Table:
        return status_table(self.states, f"study {self.spec.path.name}: {_counts(self.states)}")


def _counts(states) -> str:
    counts = {}
    for s in states:
        counts[s.status] = counts.get(s.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _seconds(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def status_table(states: list[JobState], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("job")
    table.add_column("status")
    table.add_column("time", no_wrap=True)
    table.add_column("details", overflow="fold")  # paths whole, folded, never cut
    for s in states:
        colour = _COLOURS[s.status]
        seconds = (time.monotonic() - s.since if s.status == "running" and s.since
                   else s.duration_s)
        if s.status == "failed":
            details = f"{s.reason.splitlines()[0][:160] if s.reason else ''}\nlog: {s.log}"
        elif s.status == "running":
            details = f"log: {s.log}"
        else:
            details = s.reason or _summary(s.job.stage, s.outputs)
        table.add_row(s.job.id, f"[{colour}]{s.status}[/]", _seconds(seconds), escape(details))
    return table


def _summary(stage: str, outputs: dict) -> str:
    """One line on what a finished job wrote."""
    if not outputs:
        return ""
    if stage == "extract":
        rate = f", {outputs['img_per_s']:g} img/s" if outputs.get("img_per_s") else ""
        return f"{outputs['n_images']} images{rate}: {outputs.get('cache')}"
    if stage == "probe":
        return "; ".join(f"{label}: {md}" for label, (md, _) in outputs["tables"].items())
    if stage == "umap":
        return f"{len(outputs['figures'])} figures, e.g. {outputs['figures'][-1]}"
    return "; ".join(m["figure"] for m in outputs["maps"])


# -- what is done already -----------------------------------------------------------------------
def _output_files(stage: str, outputs: dict) -> list[str]:
    """The files a finished job's outputs name (all must still exist for it to count as done)."""
    if stage == "extract":
        return [outputs["cache"]] if outputs.get("cache") else []
    if stage == "probe":
        return [p for paths in outputs.get("tables", {}).values() for p in paths]
    if stage == "umap":
        return outputs.get("figures", []) + outputs.get("metrics", [])
    return [m[k] for m in outputs.get("maps", []) for k in ("figure", "table", "maps_file")]


def _still_done(job: Job, prior: dict | None, signature: str) -> bool:
    """Whether the record's entry for ``job`` still stands: done with the same options and
    inputs, every output in place (and a cache with the key it had)."""
    if not prior or prior.get("status") not in ("done", "skipped") or \
            prior.get("signature") != signature:
        return False
    outputs = prior.get("outputs") or {}
    files = _output_files(job.stage, outputs)
    if not files or not all(Path(p).is_file() for p in files):
        return False
    return job.stage != "extract" or read_cache_key(Path(outputs["cache"])) == \
        outputs.get("cache_key")


def _inputs(job: Job, states: dict[str, JobState]) -> tuple[dict[str, dict], str]:
    """(model -> cache and key, from the finished extractions ``job`` needs; why it cannot run,
    or ""). The probe and the maps take the caches there are; RISE needs its model's cache and
    the probe."""
    if job.stage == "extract":
        return {}, ""
    deps = [states[d] for d in job.deps]
    caches = {s.job.model: {"cache": s.outputs["cache"], "cache_key": s.outputs["cache_key"]}
              for s in deps if s.job.stage == "extract" and s.status in ("done", "skipped")
              and s.outputs.get("cache")}
    missing = [s.job.id for s in deps if s.status not in ("done", "skipped")]
    if not caches:
        return {}, f"not run: no cache ({', '.join(missing)} did not finish)"
    if job.stage == "rise" and missing:
        return {}, f"not run: {', '.join(missing)} did not finish"
    return caches, ""


# -- running ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (a killed coordinator, a cluster's time limit) ends the run as Ctrl-C does: what
    runs is stopped and recorded as interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_study(study: str | Path | StudySpec, *, launcher: str | None = None,
              jobs: int | None = None, rerun: bool = False, progress: bool = True) -> StudyRun:
    """Run every job of a study file (:func:`~vlmprobe.study.load_study`), skipping jobs the run
    record shows done with the same options and inputs, and return what happened.

    ``launcher``/``jobs`` override the file's (local: ``jobs`` processes at once, default 1;
    slurm: at most ``jobs`` submitted at once, default no limit). ``rerun``: run every job again
    (extraction still reports a valid cache up to date). One failing job fails only the jobs that
    need it; Ctrl-C or SIGTERM stops what runs and records it as interrupted. ``progress``: a
    live status table on standard error.
    """
    spec = study if isinstance(study, StudySpec) else load_study(study)
    name = launcher or spec.launcher.name
    if name not in LAUNCHERS:
        raise VlmprobeError(f"Unknown launcher {name!r}; use one of {', '.join(LAUNCHERS)}.")
    if jobs is not None and jobs < 1:
        raise VlmprobeError(f"--jobs {jobs}: give 1 or more jobs at once.")
    at_once = jobs or spec.launcher.jobs or (1 if name == "local" else None)
    pool = make_launcher(spec, name, at_once)  # checks cluster resources before any job
    path = record_path(spec.out)
    with WriterLock(path):  # one coordinator per study folder
        return _run(spec, pool, name, at_once, path, rerun, progress)


def _run(spec: StudySpec, pool, name: str, at_once: int | None, path: Path, rerun: bool,
         progress: bool) -> StudyRun:
    record = read_record(path) or new_record()
    record.update(study_file=str(spec.path), study_yaml=spec.text, out=str(spec.out),
                  resolved=_resolved(spec, name, at_once))
    run = {"started": now_utc(), "finished": None, "command_line": " ".join(sys.argv),
           "launcher": name, "jobs_at_once": at_once, "counts": {}, "interrupted": False,
           "provenance": provenance(stage="study")}
    record["runs"].append(run)
    index = len(record["runs"]) - 1
    write_record(path, record)
    states = {j.id: JobState(j) for j in plan(spec)}
    log.info(f"Study {spec.path}: {len(states)} jobs ({len(spec.models)} models x "
             f"{len(spec.datasets)} datasets, stages {', '.join(spec.stages)}) on the {name} "
             f"launcher; outputs in {spec.out}")
    started: dict[str, tuple] = {}  # id -> (signature, inputs, work, launcher id)
    interrupted = False
    title = f"study {spec.path.name}"
    live = Live(status_table(list(states.values()), title), console=console, transient=True,
                auto_refresh=False) if progress else contextlib.nullcontext()
    with live, _sigterm_interrupts():
        try:
            while True:
                for state in states.values():
                    if state.status != "pending" or any(
                            states[d].status not in FINISHED for d in state.job.deps):
                        continue
                    job = state.job
                    inputs, blocked = _inputs(job, states)
                    if blocked:
                        _finish(record, index, state, {"status": "failed", "reason": blocked},
                                None)
                        continue
                    signature = state.signature = job.signature(
                        inputs, {d: states[d].signature for d in job.deps})
                    prior = record["jobs"].get(job.id)
                    if not rerun and _still_done(job, prior, signature):
                        state.status, state.outputs = "skipped", prior["outputs"]
                        state.reason = f"done in run {prior['run'] + 1}"
                        state.log, state.duration_s = prior.get("log", ""), prior.get("duration_s")
                        continue
                    if pool.free() <= 0:
                        continue
                    work = job.work(spec, inputs)
                    state.status, state.since = "running", time.monotonic()
                    state.log = str(work.log)
                    started[job.id] = (signature, inputs, work, pool.start(work))
                    log.info(f"{job.id}: started ({state.log})")
                if all(s.status in FINISHED for s in states.values()):
                    break
                for job_id, result in pool.wait(1.0 if name == "local" else 5.0):
                    _finish(record, index, states[job_id], result, started[job_id])
                    write_record(path, record)
                    state = states[job_id]
                    log.info(f"{job_id}: {state.status}" + (f": {state.reason}" if
                                                            state.reason else ""))
                if progress:
                    live.update(status_table(list(states.values()), title), refresh=True)
        except KeyboardInterrupt:
            interrupted = True
            for job_id in pool.stop():
                _finish(record, index, states[job_id],
                        {"status": "interrupted", "reason": "stopped by Ctrl-C / SIGTERM"},
                        started[job_id])
    run.update(finished=now_utc(), interrupted=interrupted,
               counts={k: sum(s.status == k for s in states.values()) for k in FINISHED})
    write_record(path, record)
    report = None
    if spec.report is not None and not interrupted:
        report = _write_report(spec, run)
        write_record(path, record)
    return StudyRun(spec, path, list(states.values()), interrupted, report)


def _write_report(spec: StudySpec, run: dict) -> Path | None:
    """The study's report over what its jobs left (failed jobs' cells marked), noted in the run's
    record; a report that cannot be written is noted there, the jobs' results stay."""
    from ..report import write_report  # it reads the study's record: imported when used

    start = time.perf_counter()
    try:
        html, md = write_report(spec.out, spec.report.config)
    except VlmprobeError as e:
        run["report"] = {"status": "failed", "reason": str(e)}
        log.error(f"The report could not be written: {e}")
        return None
    run["report"] = {"status": "done", "html": str(html), "markdown": str(md),
                     "duration_s": round(time.perf_counter() - start, 1)}
    log.info(f"Report: {html}")
    return html


def _finish(record: dict, index: int, state: JobState, result: dict,
            launched: tuple | None) -> None:
    """Note a job's result in its state and the record."""
    job = state.job
    outputs = result.get("outputs") or {}
    status, reason = result["status"], result.get("reason", "")
    if status in ("done", "skipped") and job.stage == "extract" and not outputs.get("cache"):
        status, reason = "failed", "no whole cache was written (shards only); see the log"
    state.status, state.reason, state.outputs = status, reason, outputs
    state.duration_s = result.get("duration_s")
    state.log = result.get("log") or state.log
    signature, inputs, work, launcher_id = launched or (None, {}, None, None)
    record["jobs"][job.id] = plain({
        "stage": job.stage, "dataset": job.dataset.name, "model": job.model,
        "status": status, "reason": reason, "log": state.log, "run": index,
        "started": result.get("started"), "finished": result.get("finished"),
        "duration_s": state.duration_s, "call": job.call(work) if work else None,
        "options": job.options(), "inputs": inputs, "signature": signature,
        "launcher_id": launcher_id, "outputs": outputs})


def _resolved(spec: StudySpec, launcher: str, at_once: int | None) -> dict:
    return plain({"models": spec.models,
                  "datasets": {d.name: {"dataset": d.dataset, "root": d.root,
                                        "options": d.options} for d in spec.datasets},
                  "stages": spec.stages,
                  "report": asdict(spec.report.config) if spec.report else None,
                  "launcher": {"name": launcher, "jobs": at_once, "cluster": spec.launcher.cluster,
                               "resources": spec.launcher.resources}})


# -- a dry run -----------------------------------------------------------------------------------
@dataclass
class PlannedJob:
    job: Job
    done: bool
    note: str  # what the record says about it
    estimate_s: float | None  # time it would take, where a measured rate or duration says


@dataclass
class StudyPlan:
    """What :func:`run_study` would do now: each job, whether it is done, and time estimates."""

    spec: StudySpec
    jobs: list[PlannedJob]

    @property
    def to_run(self) -> list[PlannedJob]:
        return [p for p in self.jobs if not p.done]

    def estimate(self) -> str:
        todo = self.to_run
        known = [p.estimate_s for p in todo if p.estimate_s is not None]
        if not todo:
            return "Nothing to run: every job is done."
        text = (f"{len(todo)} of {len(self.jobs)} jobs to run; time left about "
                f"{_seconds(sum(known))} for the {len(known)} with a measured rate or duration"
                if known else f"{len(todo)} of {len(self.jobs)} jobs to run; no measured rate "
                              "yet to estimate the time")
        unknown = len(todo) - len(known)
        return text + (f", {unknown} not estimated." if known and unknown else ".")

    def table(self) -> Table:
        table = Table("job", "state", "estimate", "record", title=f"study {self.spec.path.name}"
                      f" (dry run): {self.estimate()}", title_justify="left")
        for p in self.jobs:
            table.add_row(p.job.id, "[cyan]done[/]" if p.done else "to run",
                          "" if p.done else _seconds(p.estimate_s) or "?", escape(p.note))
        return table


def plan_study(study: str | Path | StudySpec, *, rerun: bool = False) -> StudyPlan:
    """The jobs :func:`run_study` would run, what the record shows done, and the time left from
    the img/s the record measured per model (extraction) and earlier durations (the rest)."""
    spec = study if isinstance(study, StudySpec) else load_study(study)
    record = read_record(record_path(spec.out)) or new_record()
    entries = record["jobs"]
    rates: dict[str, list[float]] = {}
    for e in entries.values():
        if e["stage"] == "extract" and (e.get("outputs") or {}).get("img_per_s"):
            rates.setdefault(e["model"], []).append(e["outputs"]["img_per_s"])
    sizes: dict[str, int | None] = {}
    states: dict[str, JobState] = {}
    planned = []
    for job in plan(spec):
        prior = entries.get(job.id)
        state = states[job.id] = JobState(job)
        inputs, blocked = _inputs(job, states)
        state.signature = job.signature(inputs, {d: states[d].signature for d in job.deps})
        done = (not rerun and not blocked and all(states[d].status == "done" for d in job.deps)
                and prior is not None and _still_done(job, prior, state.signature))
        if done:
            state.status, state.outputs = "done", prior["outputs"]
        note = (f"done in run {prior['run'] + 1}" if done else
                f"{prior['status']} in run {prior['run'] + 1}" + (
                    f": {prior['reason'].splitlines()[0][:120]}" if prior.get("reason") else "")
                if prior else "")
        estimate = None
        if not done and job.stage == "extract" and job.model in rates:
            n = sizes[job.dataset.name] if job.dataset.name in sizes else \
                sizes.setdefault(job.dataset.name, _n_images(job))
            estimate = n / statistics.median(rates[job.model]) if n else None
        elif not done and prior and prior.get("status") in ("done", "skipped"):
            estimate = prior.get("duration_s")
        planned.append(PlannedJob(job, done, note, estimate))
    return StudyPlan(spec, planned)


def _n_images(job: Job) -> int | None:
    from ..data import load_dataset

    try:
        return len(load_dataset(job.dataset.dataset, job.dataset.root, **job.dataset.options))
    except VlmprobeError:
        return None
