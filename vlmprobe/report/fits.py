"""Probes the report fits itself, by the study's own protocol and split: the shuffled-label
floor of every model and label (the null control: training labels permuted, test labels kept),
and each declared nuisance column the study did not probe. They are written under the report
folder (tables, saved probes) and reused while the caches and settings are unchanged."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

from ..cache import Cache
from ..cache.chunks import write_atomic
from ..probe import ProbeConfig, ProbeResult, read_table, run_probe
from ..probe.tables import table_name
from ..study.record import plain

log = logging.getLogger(__name__)

MEMO = "fits.json"


def _signature(caches: list[Cache], cfg: ProbeConfig, label: str | None) -> str:
    payload = {"caches": sorted(c.cache_key for c in caches), "label": label,
               "config": asdict(cfg)}
    return hashlib.sha256(json.dumps(plain(payload), sort_keys=True).encode()).hexdigest()


def table_path(cfg: ProbeConfig, label: str | None, shuffled: bool, folder: Path) -> Path:
    """Where :func:`fit` keeps the table of these probes."""
    return folder / f"{table_name(replace(cfg, shuffle_labels=shuffled, subgroups=()), label)}.json"


def fit(caches: list[Cache], cfg: ProbeConfig, label: str | None, shuffled: bool,
        folder: Path) -> list[ProbeResult]:
    """The probe of ``label`` (None: the class) on ``caches``, with shuffled training labels
    or not, under ``folder``; read back from its table while its signature is unchanged."""
    table = table_path(cfg, label, shuffled, folder)
    cfg = replace(cfg, shuffle_labels=shuffled, subgroups=())
    memo_path = folder / MEMO
    memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    datasets = sorted({c.dataset + c.view_tag for c in caches})
    slot = f"{table.stem}|{'+'.join(datasets)}"
    signature = _signature(caches, cfg, label)
    if memo.get(slot) == signature and table.is_file():
        wanted = {(c.model, c.dataset + c.view_tag) for c in caches}
        rows = [r for r in read_table(table) if (r.model, r.dataset) in wanted]
        if len(rows) >= len(caches):
            return rows
    what = f"{label or 'class'}{' (shuffled labels)' if shuffled else ''}"
    log.info(f"report: probing {what} on {', '.join(datasets)} for "
             f"{', '.join(c.model for c in caches)}")
    run = run_probe(caches, cfg, label=label, out=folder)
    run.save(folder)
    memo[slot] = signature
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(memo_path, json.dumps(memo, indent=1) + "\n")
    return list(run)
