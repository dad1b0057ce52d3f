"""The jobs of a study and their order: per dataset, one extraction per model, then the probe over
its models' caches, the UMAP maps, and RISE per model through the saved probes. A job's
signature (stage, dataset, options, input caches) decides whether a recorded job is still done.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from ..registry import get_model_entry, load_registry
from .record import plain
from .spec import DatasetSpec, StudySpec
from .stages import CLASS_LABEL, STAGES, Settings, Work


@dataclass
class Job:
    id: str
    stage: str
    dataset: DatasetSpec
    model: str | None
    deps: list[str]
    settings: Settings

    @property
    def log_name(self) -> str:
        return self.id.replace("/", ".") + ".log"

    def options(self) -> dict:
        """The options as run, every config field included (the record's ``options``)."""
        return plain({"config": asdict(self.settings.config),
                      "keywords": self.settings.keywords})

    def signature(self, inputs: dict[str, dict], after: dict[str, str | None]) -> str:
        """What the job's outputs depend on: its options, its input caches (by key) and the
        signatures of the jobs it ran ``after`` (a probe refitted with other options makes the
        RISE maps of its probes stale)."""
        payload = {"stage": self.stage, "model": self.model, "dataset": self.dataset.dataset,
                   "root": str(self.dataset.root), "dataset_options": self.dataset.options,
                   "options": self.options(),
                   "inputs": {m: v["cache_key"] for m, v in sorted(inputs.items())},
                   "after": dict(sorted(after.items()))}
        text = json.dumps(plain(payload), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def work(self, spec: StudySpec, inputs: dict[str, dict]) -> Work:
        return Work(self.id, self.stage, self.dataset.dataset, self.model, self.dataset.root,
                    self.dataset.options, spec.out / "caches", spec.out / "results",
                    self.settings, {m: v["cache"] for m, v in inputs.items()},
                    spec.out / "logs" / self.log_name)

    def call(self, work: Work) -> str:
        """The API call the job makes, as Python (the record's ``call``)."""
        kw = "".join(f", {k}={v!r}" for k, v in self.settings.keywords.items())
        caches = [str(p) for p in work.inputs.values()]
        if self.stage == "extract":
            return (f"vlmprobe.extract({self.model!r}, {work.dataset!r}, root='{work.root}', "
                    f"out='{work.caches_dir}', config={self.settings.config!r}, "
                    f"dataset_options={work.dataset_options!r}{kw})")
        if self.stage == "probe":  # one probe and table per label
            labels = self.settings.keywords.get("label", [CLASS_LABEL])
            probe, save = (self.settings.call_keywords(c) for c in STAGES["probe"].calls)
            other = "".join(f", {k}={v!r}" for k, v in probe.items() if k != "label")
            saved = ", ".join(f"{k}={v!r}" for k, v in save.items())
            return "; ".join(
                f"vlmprobe.run_probe({caches!r}, {self.settings.config!r}, out="
                f"'{work.results_dir}', label={None if x == CLASS_LABEL else x!r}{other})"
                f".save({saved})" for x in (labels if isinstance(labels, list) else [labels]))
        name = {"umap": "run_umap", "rise": "run_rise"}[self.stage]
        return (f"vlmprobe.{name}({caches!r}, {self.settings.config!r}, "
                f"out='{work.results_dir}'{kw})")

def plan(spec: StudySpec) -> list[Job]:
    """Every job, dataset by dataset, each after the jobs it needs."""
    entries = load_registry()
    baseline = {m: get_model_entry(m, entries).baseline for m in spec.models}
    jobs = []
    for d in spec.datasets:
        extracts = [Job(f"extract/{m}/{d.name}", "extract", d, m, [],
                        spec.settings("extract", d, m)) for m in spec.models]
        jobs += extracts
        after = [j.id for j in extracts]
        stages = [s for s in spec.stages if d.runs(s)]
        if "probe" in stages:
            jobs.append(Job(f"probe/{d.name}", "probe", d, None, after,
                            spec.settings("probe", d)))
        probe = [f"probe/{d.name}"] if "probe" in stages else []
        if "umap" in stages:  # after the probe: its maps show the probe's predictions
            jobs.append(Job(f"umap/{d.name}", "umap", d, None, after + probe,
                            spec.settings("umap", d)))
        if "rise" in stages and probe:
            for m in spec.models:
                settings = spec.settings("rise", d, m)
                if baseline[m] and not settings.keywords.get("include_baselines"):
                    continue  # as run_rise: null baselines are explained only when asked
                jobs.append(Job(f"rise/{m}/{d.name}", "rise", d, m,
                                [f"extract/{m}/{d.name}", *probe], settings))
    return jobs
