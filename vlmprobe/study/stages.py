"""What each stage of a study runs, through the public API only: its config class and the API
calls whose keyword parameters are its options (so a setting added to a config or a stage
function is a study option with no change here), and the function a job of it runs.

extract: one job per model x dataset, ``vlmprobe.extract`` (a valid cache is reported up to date);
probe: one job per dataset over its models' caches, ``run_probe(...).save()`` per label;
umap: one job per dataset, ``run_umap`` (models side by side); rise: one job per model x dataset,
``run_rise`` through the probes the probe job saved. The report (``report:``) is written once
after the jobs, over the whole study.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..cache import read_cache_key
from ..cache.chunks import WriterLock
from ..extraction import ExtractConfig, extract
from ..maps import UmapGrid, run_umap
from ..probe import ProbeConfig, ProbeRun, run_probe
from ..rise import RiseConfig, run_rise

log = logging.getLogger(__name__)

#: what the probe's ``label`` and RISE's ``labels`` call the class itself
CLASS_LABEL = "class"


@dataclass(frozen=True)
class Stage:
    """A stage as the study file sees it. Options are fields of ``config`` or keyword parameters
    of ``calls``, except ``set_by_study`` (inputs, outputs, the launcher's sharding);
    ``lists``: keyword options that may also be a list, run once per value."""

    name: str
    config: type
    calls: tuple[Callable, ...]
    set_by_study: frozenset[str]
    per_model: bool  # one job per model x dataset, else one per dataset
    lists: frozenset[str] = field(default_factory=frozenset)


STAGES = {s.name: s for s in (
    Stage("extract", ExtractConfig, (extract,),
          frozenset({"model", "dataset", "root", "out", "config", "dataset_options", "progress",
                     "shard"}), per_model=True),
    Stage("probe", ProbeConfig, (run_probe, ProbeRun.save),
          frozenset({"caches", "config", "out", "directory"}), per_model=False,
          lists=frozenset({"label"})),
    Stage("umap", UmapGrid, (run_umap,), frozenset({"caches", "grid", "out"}), per_model=False),
    Stage("rise", RiseConfig, (run_rise,), frozenset({"caches", "config", "out"}),
          per_model=True),
)}


@functools.cache
def report_stage() -> Stage:
    """The study's report (:mod:`vlmprobe.report`): not a job but one step after every job, over
    the whole output folder; its options are ReportConfig's. Imported when a study file is read,
    since the report reads the study's run record (:mod:`.record`)."""
    from ..report import ReportConfig, write_report

    return Stage("report", ReportConfig, (write_report,), frozenset({"run_dir", "config", "out"}),
                 per_model=False)


@dataclass(frozen=True)
class Settings:
    """One job's options: its stage's config object and the keyword options of its API calls."""

    config: object
    keywords: dict

    def call_keywords(self, call: Callable) -> dict:
        """The keyword options ``call`` takes."""
        names = inspect.signature(call).parameters
        return {k: v for k, v in self.keywords.items() if k in names}


@dataclass
class Work:
    """Everything one job needs, sent to the process that runs it (no open files, no caches)."""

    id: str
    stage: str
    dataset: str  # the registry key
    model: str | None
    root: Path
    dataset_options: dict
    caches_dir: Path  # <out>/caches: extraction writes here, splits sit beside the caches
    results_dir: Path  # <out>/results: tables and every stage output
    settings: Settings
    inputs: dict[str, str]  # model -> cache file (analysis stages)
    log: Path


@contextlib.contextmanager
def _waiting_for(lock: WriterLock, poll_s: float = 0.2):
    """Hold ``lock``, waiting while another job holds it (probe jobs of several datasets add rows
    to the same tables)."""
    while not lock.try_acquire():
        time.sleep(poll_s)
    try:
        yield
    finally:
        lock.release()


def run_extract(work: Work) -> dict:
    s = work.settings
    start = time.perf_counter()
    r = extract(work.model, work.dataset, root=work.root, out=work.caches_dir, config=s.config,
                dataset_options=work.dataset_options, progress=False,
                **s.call_keywords(extract))
    seconds = time.perf_counter() - start
    log.info(r.summary())
    cache = r.merged or (r.path if r.status != "shard written" else None)
    out = {"status": r.status, "n_images": r.n_images, "n_skipped": r.n_skipped,
           "cache": str(cache) if cache else None,
           "cache_key": read_cache_key(cache) if cache else None}
    if r.status != "up to date":  # a rate only where images were embedded
        out["img_per_s"] = round((r.n_images + r.n_skipped) / seconds, 2)
    return out


def run_probe_stage(work: Work) -> dict:
    s = work.settings
    labels = s.keywords.get("label", [CLASS_LABEL])
    tables, results = {}, []
    for label in labels if isinstance(labels, list) else [labels]:
        keywords = {**s.call_keywords(run_probe), "label": None if label == CLASS_LABEL else label}
        run = run_probe(list(work.inputs.values()), s.config, out=work.results_dir, **keywords)
        with _waiting_for(WriterLock(work.results_dir / run.table_name)):
            md, csv = run.save(**s.call_keywords(ProbeRun.save))
        tables[label] = [str(md), str(csv)]
        log.info(f"Table ({label}): {md} and {csv}")
        results += [r.to_record() for r in run]
    return {"tables": tables, "results": results}


def run_umap_stage(work: Work) -> dict:
    run = run_umap(list(work.inputs.values()), work.settings.config, out=work.results_dir,
                   **work.settings.call_keywords(run_umap))
    return {"figures": [str(p) for p in run.figures],
            "pages": [str(p) for m in run for p in m.pages],
            "metrics": [str(p) for m in run for p in m.metrics_files],
            "scores": run.to_frame().to_dict("records")}


def run_rise_stage(work: Work) -> dict:
    run = run_rise(list(work.inputs.values()), work.settings.config, out=work.results_dir,
                   **work.settings.call_keywords(run_rise))
    return {"maps": [{"model": m.cache.model, "figure": str(m.figure), "panels": str(m.panels),
                      "table": str(m.table), "maps_file": str(m.maps_file),
                      "images": m.relpaths, "by_probe": m.by_probe} for m in run]}


RUNS = {"extract": run_extract, "probe": run_probe_stage, "umap": run_umap_stage,
        "rise": run_rise_stage}
