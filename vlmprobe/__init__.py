"""vlmprobe: what medical vision-language encoders really see.

Every stage of the study from Python, with the results the command line gives::

    import vlmprobe

    vlmprobe.show_messages()                      # optional: progress messages, as the CLI shows
    r = vlmprobe.extract("efficientnet_lite0", "breastus_phantom", root="data", out="caches")
    cache = r.read()
    probes = vlmprobe.run_probe([cache])          # ProbeRun: .to_frame(), .save() writes tables
    maps = vlmprobe.run_umap([cache], vlmprobe.UmapConfig())
    saliency = vlmprobe.run_rise([cache], vlmprobe.RiseConfig(n_masks=1024))
    study = vlmprobe.run_study("study.yaml")      # every stage for models x datasets (StudyRun)
    path = vlmprobe.import_features("uni.npy", "labels.csv", model="uni", dataset="crc")
    html, md = vlmprobe.write_report("study_out")  # the study's report (run_report: the object)

Each stage takes its settings as one config object (``ExtractConfig``, ``ProbeConfig``,
``UmapGrid``/``UmapConfig``, ``RiseConfig``) or as keyword options that change single settings,
and returns a typed result with ``to_frame()``. The names below are imported on first use, so
``import vlmprobe`` and the command line stay quick.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

#: public name -> the module that defines it
_EXPORTS = {
    # the registries: a model or a dataset is an entry
    "list_models": "vlmprobe.registry", "list_datasets": "vlmprobe.registry",
    "ModelEntry": "vlmprobe.registry", "DatasetEntry": "vlmprobe.registry",
    # data on disk, and phantom datasets with known truth
    "load_dataset": "vlmprobe.data", "make_phantom": "vlmprobe.data.phantoms",
    # encoders and extraction into the cache
    "load_encoder": "vlmprobe.encoders", "Encoder": "vlmprobe.encoders",
    "extract": "vlmprobe.extraction", "ExtractConfig": "vlmprobe.extraction",
    "ExtractResult": "vlmprobe.extraction",
    "read_cache": "vlmprobe.cache", "Cache": "vlmprobe.cache",
    # embeddings another tool computed, as a cache probe and umap read
    "import_features": "vlmprobe.cache.imported",
    # the stages over caches
    "run_probe": "vlmprobe.probe", "ProbeConfig": "vlmprobe.probe", "ProbeRun": "vlmprobe.probe",
    "ProbeResult": "vlmprobe.probe",
    "run_umap": "vlmprobe.maps", "UmapGrid": "vlmprobe.maps", "UmapConfig": "vlmprobe.maps",
    "UmapRun": "vlmprobe.maps", "UmapMaps": "vlmprobe.maps",
    "run_rise": "vlmprobe.rise", "RiseConfig": "vlmprobe.rise", "ImageChoice": "vlmprobe.rise",
    "RiseRun": "vlmprobe.rise", "RiseMaps": "vlmprobe.rise",
    # a whole study (models x datasets x stages) from one YAML file
    "run_study": "vlmprobe.study", "plan_study": "vlmprobe.study", "StudyRun": "vlmprobe.study",
    # the report of a study or a cache directory
    "run_report": "vlmprobe.report", "write_report": "vlmprobe.report", "Report": "vlmprobe.report",
    "ReportConfig": "vlmprobe.report",
    # messages and errors
    "show_messages": "vlmprobe.messages", "VlmprobeError": "vlmprobe.validation",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what static tools and IDEs see; at run time __getattr__ imports on demand
    from .cache import Cache, read_cache  # noqa: F401
    from .cache.imported import import_features  # noqa: F401
    from .data import load_dataset  # noqa: F401
    from .data.phantoms import make_phantom  # noqa: F401
    from .encoders import Encoder, load_encoder  # noqa: F401
    from .extraction import ExtractConfig, ExtractResult, extract  # noqa: F401
    from .maps import UmapConfig, UmapGrid, UmapMaps, UmapRun, run_umap  # noqa: F401
    from .messages import show_messages  # noqa: F401
    from .probe import ProbeConfig, ProbeResult, ProbeRun, run_probe  # noqa: F401
    from .registry import DatasetEntry, ModelEntry, list_datasets, list_models  # noqa: F401
    from .rise import ImageChoice, RiseConfig, RiseMaps, RiseRun, run_rise  # noqa: F401
    from .report import Report, ReportConfig, run_report, write_report  # noqa: F401
    from .study import StudyRun, plan_study, run_study  # noqa: F401
    from .validation import VlmprobeError  # noqa: F401


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vlmprobe' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
