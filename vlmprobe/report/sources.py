"""What a report is made of, read from a study's output folder (its run record) or from a plain
cache directory: per dataset the caches, the probe tables and the rows of them that are its, the
UMAP and RISE outputs, the declared nuisance columns, and every job that did not finish, with
its reason, so the report can mark the cells it leaves empty."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..cache import find_caches, read_cache
from ..probe import ProbeConfig
from ..registry import get_dataset_entry
from ..study.record import RECORD_NAME, SCHEMA_VERSION, read_record
from ..validation import VlmprobeError

CLASS = "class"


@dataclass
class Job:
    """One job of a study as the run record has it (or should have it: ``status`` "missing")."""

    id: str
    stage: str
    dataset: str
    model: str | None
    status: str  # done | skipped | failed | interrupted | missing
    reason: str = ""
    log: str = ""
    duration_s: float | None = None
    started: str | None = None
    finished: str | None = None
    call: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")

    def why(self) -> str:
        """One line on why the job left nothing to show."""
        first = self.reason.splitlines()[0] if self.reason else ""
        return f"{self.id} {self.status}" + (f": {first}" if first else "")


@dataclass
class DatasetRun:
    """One dataset of the study: its outputs, and why any are missing."""

    name: str                   # as the study names it (the report's column)
    key: str                    # the registry key
    models: list[str]           # the study's models, in its order
    caches: dict[str, Path] = field(default_factory=dict)  # model -> cache file
    probe: ProbeConfig | None = None  # the probe's settings (None: no probe ran here)
    tables: dict[str, Path] = field(default_factory=dict)  # label -> the table's JSON
    rows: set | None = None  # keys (name, dataset, label) of its rows; None: every row of it
    umap_metrics: list[Path] = field(default_factory=list)
    umap_figures: list[Path] = field(default_factory=list)
    umap_pages: list[Path] = field(default_factory=list)
    rise: list[Path] = field(default_factory=list)  # each model's RISE numbers (JSON)
    nuisance: list[str] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)

    def job(self, stage: str, model: str | None = None) -> Job | None:
        return next((j for j in self.jobs if j.stage == stage and j.model == model), None)

    def problem(self, stage: str, model: str | None = None) -> str:
        """Why ``stage`` (of ``model``) left nothing, or "" where it finished."""
        j = self.job(stage, model)
        return "" if j is None or j.ok else j.why()


@dataclass
class Source:
    """A study's outputs (``record`` set) or a cache directory's, ready to report on."""

    path: Path
    record: dict | None
    datasets: list[DatasetRun]

    @property
    def jobs(self) -> list[Job]:
        return [j for d in self.datasets for j in d.jobs]


def read_source(path: str | Path) -> Source:
    """A study's output folder (with ``run_record.json``) or a cache directory (``*.h5``)."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise VlmprobeError(f"{path} is not a folder; give a study's output folder (its 'out:', "
                            "with run_record.json) or a cache directory.")
    if (path / RECORD_NAME).is_file():
        return _from_record(path, read_record(path / RECORD_NAME))
    return _from_caches(path)


def _config(cls, options: dict):
    """A config from the record's options (JSON lists back to the tuples the config holds)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()
                  if k in names})


def _declared_nuisance(key: str, options: dict, cache: Path | None) -> list[str]:
    """The study's own nuisance_columns for the dataset, else those the cache was made with,
    else the registry's (caches made before the field existed)."""
    if "nuisance_columns" in options:
        return list(options["nuisance_columns"])
    if cache is not None:
        entry = read_cache(cache).dataset_entry
        if "nuisance_columns" in entry:
            return list(entry["nuisance_columns"])
    try:
        return list(get_dataset_entry(key).nuisance_columns)
    except VlmprobeError:  # a dataset of another registry file, no longer registered
        return []


def _check_record(path: Path, record: dict) -> None:
    """An older record (or one missing what the report reads) names the study to rerun."""
    version = record.get("schema_version", 0)
    missing = [k for k in ("resolved", "jobs", "runs", "out") if k not in record]
    if version < SCHEMA_VERSION or missing:
        study = record.get("study_file", "<study file>")
        raise VlmprobeError(
            f"{path / RECORD_NAME} was written by an older vlmprobe (run record schema "
            f"{version}, this one reads {SCHEMA_VERSION}"
            + (f"; it lacks {', '.join(missing)}" if missing else "") + "). Rerun the study "
            f"with this vlmprobe, `vlmprobe study {study} --rerun` (valid caches are kept), "
            "then `vlmprobe report` again.")


def _skipped_stages(record: dict) -> dict[str, set[str]]:
    """Per dataset, the stages its study file turns off (``<stage>: false``)."""
    try:
        doc = yaml.safe_load(record.get("study_yaml") or "") or {}
    except yaml.YAMLError:
        return {}
    datasets = doc.get("datasets") if isinstance(doc, dict) else None
    return {name: {s for s, o in ((entry or {}).get("stages") or {}).items() if o is False}
            for name, entry in (datasets or {}).items() if isinstance(entry, dict)}


def _from_record(path: Path, record: dict) -> Source:
    _check_record(path, record)
    resolved, entries = record["resolved"], record["jobs"]
    models, stages = resolved["models"], resolved["stages"]
    skipped = _skipped_stages(record)
    datasets = []
    for name, spec in resolved["datasets"].items():
        d = DatasetRun(name, spec["dataset"], list(models))
        runs = [s for s in stages if s not in skipped.get(name, set())]
        expected = [f"extract/{m}/{name}" for m in models]
        expected += [f"{s}/{name}" for s in ("probe", "umap") if s in runs]
        expected += sorted(i for i, j in entries.items()
                           if j["stage"] == "rise" and j["dataset"] == name)
        if "rise" in runs and not any(i.startswith("rise/") for i in expected):
            first = next((m for m in models if f"rise/{m}/{name}" not in entries), models[0])
            expected.append(f"rise/{first}/{name}")
        for job_id in expected:
            d.jobs.append(_job(job_id, entries.get(job_id)))
        for job in d.jobs:
            if not job.ok:
                continue
            out = entries[job.id].get("outputs") or {}
            if job.stage == "extract" and out.get("cache"):
                d.caches[job.model] = Path(out["cache"])
            elif job.stage == "probe":
                d.probe = _config(ProbeConfig, entries[job.id]["options"]["config"])
                d.tables = {label: Path(md).with_suffix(".json")
                            for label, (md, _) in out.get("tables", {}).items()}
                d.rows = {(r["name"], r["dataset"], r["label"]) for r in out.get("results", [])}
            elif job.stage == "umap":
                d.umap_metrics = [Path(p) for p in out.get("metrics", []) if p.endswith(".json")]
                d.umap_figures = [Path(p) for p in out.get("figures", [])]
                d.umap_pages = [Path(p) for p in out.get("pages", [])]
            elif job.stage == "rise":
                d.rise += [Path(m["table"]).with_suffix(".json") for m in out.get("maps", [])]
        first = next(iter(d.caches.values()), None)
        d.nuisance = _declared_nuisance(d.key, spec.get("options") or {}, first)
        datasets.append(d)
    return Source(path, record, datasets)


def _job(job_id: str, entry: dict | None) -> Job:
    stage, *rest = job_id.split("/")
    model, dataset = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
    if entry is None:
        return Job(job_id, stage, dataset, model, "missing",
                   "not in the run record: the study stopped before it ran")
    return Job(job_id, stage, dataset, model, entry["status"], entry.get("reason", ""),
               entry.get("log", ""), entry.get("duration_s"), entry.get("started"),
               entry.get("finished"), entry.get("call"))


def _from_caches(path: Path) -> Source:
    """A cache directory as the stages leave it: caches ``<dataset>/<model>.h5``, probe tables
    beside them (``probe_results[.<settings>].json``: per label the one with the fewest
    non-default settings), UMAP and RISE outputs in ``<dataset>/umap`` and ``<dataset>/rise``."""
    try:
        files = find_caches([path])
    except VlmprobeError:
        raise VlmprobeError(f"{path} holds neither a study's run record ({RECORD_NAME}) nor "
                            "caches (*.h5); give a study's output folder or a cache directory "
                            "(`vlmprobe extract --out`).") from None
    groups: dict[str, dict[str, Path]] = {}
    keys = {}
    for f in files:
        c = read_cache(f)
        name = c.dataset + c.view_tag
        groups.setdefault(name, {})[c.model] = f
        keys[name] = c.dataset
    tables = {}
    for p in sorted(path.glob("probe_results*.json"), key=lambda p: (len(p.name), p.name)):
        parts = p.stem.split(".")
        if "shuffled-labels" in parts:  # a null control, shown as the report's own floor
            continue
        label = next((x[len("label-"):] for x in parts if x.startswith("label-")), CLASS)
        tables.setdefault(label, p)  # the table with the fewest non-default settings
    datasets = []
    for name, caches in groups.items():
        d = DatasetRun(name, keys[name], list(caches), caches=caches,
                       probe=ProbeConfig() if tables else None, tables=tables)
        folder = next(iter(caches.values())).parent
        d.umap_metrics = sorted((folder / "umap").glob("*.metrics.json"))
        d.umap_figures = sorted((folder / "umap").glob("*.png"))
        d.umap_pages = sorted((folder / "umap").glob("*.html"))
        d.rise = sorted(p for p in (folder / "rise").glob("*.json"))
        d.nuisance = _declared_nuisance(d.key, {}, next(iter(caches.values())))
        datasets.append(d)
    return Source(path, None, datasets)


def read_json(path: Path) -> dict:
    """A stage's JSON output, or an error naming it and what to rerun."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise VlmprobeError(f"{path} cannot be read ({e}); rerun the stage that wrote it.") \
            from None
