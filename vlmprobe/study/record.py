"""The run record: one JSON file, ``<out>/run_record.json``, saying what a study ran, with which
options and versions, how long each job took and why any failed. It is rewritten after every job
(an interrupted run keeps what it finished), later runs of the study add to it, and reports read
it. This docstring is its schema (``schema_version`` 1)::

    schema, schema_version   "vlmprobe-study-record", 1
    study_file, study_yaml   the study file's path and its text as given (of the latest run)
    out                      the output folder
    resolved                 the study as run, defaults filled in: models, datasets
                             ({name: {dataset, root, options}}), stages (in order), launcher
    runs                     one per invocation: started, finished (UTC), command_line,
                             launcher, jobs_at_once, counts ({status: n}), interrupted,
                             provenance (vlmprobe.provenance: vlmprobe and package versions,
                             git commit, Python, platform)
    jobs                     {job id: job}; ids are extract/<model>/<dataset>, probe/<dataset>,
                             umap/<dataset>, rise/<model>/<dataset> (<dataset>: the study's name)

    a job:
    stage, dataset, model    model is null for per-dataset stages
    status                   done | skipped | failed | interrupted
    reason                   why it failed or was skipped ("" when done)
    log                      its log file (every message of the job, tracebacks included)
    run                      index in ``runs`` of the run that last ran or skipped it
    started, finished        UTC, ISO 8601; duration_s: seconds the job itself ran
    call                     the Python API call it made (vlmprobe.extract(...), ...)
    options                  {"config": every field of the stage's config,
                              "keywords": the API call's keyword options}
    inputs                   analysis stages: {model: {"cache": path, "cache_key": key}}
    signature                hash of stage, dataset (key, root, options), options and inputs:
                             a job recorded done with the same signature is not run again
    launcher_id              the local process id or the submitit job id
    outputs                  what it wrote, by stage:
      extract   cache, cache_key, status ("written" | "up to date"), n_images, n_skipped,
                img_per_s (where images were embedded)
      probe     tables ({label: [markdown, csv]}), results (one ProbeResult.to_record() per
                model and label: metrics as fractions with sd and 95% CI)
      umap      figures, pages (interactive HTML), metrics (CSV/JSON), scores (per map)
      rise      maps: per model {model, figure, panels, table, maps_file, images, by_probe
                (per probe the mean of each number over the images)}
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..cache.chunks import write_atomic
from ..validation import VlmprobeError

SCHEMA = "vlmprobe-study-record"
SCHEMA_VERSION = 1
RECORD_NAME = "run_record.json"


def record_path(out: Path) -> Path:
    return Path(out) / RECORD_NAME


def read_record(path: Path) -> dict | None:
    """The record at ``path``, or None where there is none yet."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VlmprobeError(f"{path} is not a readable run record ({e}); move it away to start "
                            "the record afresh (caches and results are kept).") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise VlmprobeError(f"{path} is not a vlmprobe study run record; give the study another "
                            "'out:' folder or move the file away.")
    if record.get("schema_version", 0) > SCHEMA_VERSION:
        raise VlmprobeError(f"{path} was written by a newer vlmprobe (record schema "
                            f"{record['schema_version']}); upgrade vlmprobe to continue it.")
    return record


def new_record() -> dict:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "runs": [], "jobs": {}}


def plain(obj):
    """``obj`` as strict JSON has it: numpy scalars and arrays as numbers and lists, paths and
    other objects as strings, NaN and infinities as null."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return plain(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def write_record(path: Path, record: dict) -> None:
    """Replace the record in one step: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(plain(record), indent=1, allow_nan=False) + "\n").encode())
