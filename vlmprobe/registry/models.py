"""The model registry: ``model_registry.yaml`` entries, one per model, validated once.

A model is data (source, tap, dim, preprocessing), its family is code (an adapter class in
:mod:`vlmprobe.encoders`). Users add models by pointing ``$VLMPROBE_REGISTRY`` at extra YAML files
(``:``-separated) or passing them (``--registry FILE``); a key defined twice is an error naming
both files, unless the user entry says ``replaces: builtin``. A user entry may read its weights
from a local file or snapshot directory (``weights:``), for air-gapped machines.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import asdict, dataclass, field, fields, replace
from importlib.resources import files
from pathlib import Path

from ..validation import (VlmprobeError, build_entry, merge_registry_files, read_yaml_entries,
                          unknown_key_error)

REGISTRY_ENV = "VLMPROBE_REGISTRY"
#: the built-in registry, shipped inside the package
BUILTIN_REGISTRY = Path(str(files(__package__) / "model_registry.yaml"))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_NAMED_STATS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD),
                "half": ((0.5,) * 3, (0.5,) * 3)}


@dataclass(frozen=True)
class PreprocessCfg:
    """What the model's official transform does, as facts (cf. timm's ``pretrained_cfg``).

    resize: ``shortest`` (shortest side to ``resize_size``, then centre-crop ``image_size``),
    ``squash`` (both sides to ``image_size``, aspect not kept), ``pad_square`` (pad to a square
    with ``pad_color``, then as ``shortest``), ``longest_pad`` (longer side to ``image_size``,
    aspect kept, then zero-pad right and bottom to a square: FLAIR).
    """

    image_size: int
    resize: str = "shortest"
    resize_size: int | None = None
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pad_color: tuple[int, int, int] = (0, 0, 0)
    #: 3-D encoders (CT volumes): voxel spacing in mm after resampling (RAS x, y, z), the HU
    #: window scaled to [0, 1], and the fixed input the volume is padded and centre-cropped to
    spacing: tuple[float, float, float] | None = None
    hu_window: tuple[float, float] | None = None
    volume_size: tuple[int, int, int] | None = None

    RESIZE_MODES = ("shortest", "squash", "pad_square", "longest_pad")
    #: the volume fields, left out of :meth:`to_dict` when unset so 2-D entries keep their keys
    VOLUME_FIELDS = ("spacing", "hu_window", "volume_size")

    @property
    def is_volume(self) -> bool:
        """The model reads whole 3-D volumes, not 2-D images."""
        return self.volume_size is not None

    @property
    def summary(self) -> str:
        """The input in a few words: ``224 shortest``, or a volume's ``224x224x160 CT volume``."""
        if self.is_volume:
            return "x".join(map(str, self.volume_size)) + " CT volume"
        return f"{self.image_size} {self.resize}"

    @property
    def crop_pct(self) -> float:
        return self.image_size / (self.resize_size or self.image_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resize_size"] = self.resize_size or self.image_size
        for key in self.VOLUME_FIELDS:
            if d[key] is None:
                del d[key]
        return d


@dataclass(frozen=True)
class ModelEntry:
    """One ``model_registry.yaml`` entry."""

    name: str
    family: str
    source: str
    embed_dim: int
    preprocess: PreprocessCfg
    tap: str
    architecture: str | None = None
    revision: str | None = None
    weights_file: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    medical: bool = False
    baseline: bool = False
    gated: bool = False
    trust_remote_code: bool = False
    licence: str = "unknown"
    description: str = ""
    seed: int | None = None
    #: the entry's architecture with seeded random weights (a ``<model>_random`` null baseline)
    random_init: bool = False
    #: another hub repo whose preprocessor (and, for vision towers, config) the model uses
    processor_source: str | None = None
    #: the command that installs what the family needs beyond vlmprobe's extras
    install: str | None = None
    #: facts not known or not verified, said instead of invented
    notes: str = ""
    #: a local checkpoint file or snapshot directory read instead of the hub (air-gapped machines)
    weights: str | None = None
    #: "builtin": this user entry takes the place of the shipped entry of the same key
    replaces: str | None = None

    #: where the weights are read from is not what the model is: a copy of the same weights
    #: elsewhere gives the same embeddings (their sha256 is in every cache key), so these fields
    #: stay out of the entry's identity (:meth:`to_dict`, recorded in caches and keys)
    LOCATION_FIELDS = ("weights", "replaces")

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in self.LOCATION_FIELDS}
        d["preprocess"] = self.preprocess.to_dict()
        return d


_REQUIRED = ("family", "source", "embed_dim", "preprocess", "tap")
_TYPES = {"str": str, "int": int, "bool": bool, "dict": dict, "list": list}


def check_field_types(cls, path: Path, name: str, raw: dict) -> None:
    """Refuse a field of the wrong YAML type (``embed_dim: "512"``), naming entry and field."""
    for f in fields(cls):
        if f.name not in raw or f.name == "preprocess":
            continue
        value, kinds = raw[f.name], str(f.type).replace(" ", "").split("|")
        kinds = [k.split("[", 1)[0] for k in kinds]  # list[str] -> list
        if value is None and "None" in kinds:
            continue
        wanted = tuple(_TYPES[k] for k in kinds if k in _TYPES)
        if wanted and (not isinstance(value, wanted) or (bool not in wanted
                                                          and isinstance(value, bool))):
            raise VlmprobeError(f"{path}: {cls.__name__} entry {name!r}: field {f.name!r} must "
                                f"be {f.type}, got {value!r} ({type(value).__name__}).")


def _parse_preprocess(name: str, raw: dict, where: Path) -> PreprocessCfg:
    raw = dict(raw)
    stats = raw.pop("stats", None)
    if stats is not None:
        if stats not in _NAMED_STATS:
            raise VlmprobeError(f"{where}: model {name!r} has preprocess.stats={stats!r}; use one of "
                                f"{sorted(_NAMED_STATS)} or give mean/std explicitly.")
        raw.setdefault("mean", _NAMED_STATS[stats][0])
        raw.setdefault("std", _NAMED_STATS[stats][1])
    for key in ("mean", "std", "pad_color", "spacing", "hu_window", "volume_size"):
        if key in raw:
            raw[key] = tuple(raw[key])
    check_field_types(PreprocessCfg, where, name, raw)
    try:
        cfg = PreprocessCfg(**raw)
    except TypeError as e:
        raise VlmprobeError(f"{where}: model {name!r} has a bad preprocess block ({e}).") from None
    volume = [k for k in PreprocessCfg.VOLUME_FIELDS if getattr(cfg, k) is not None]
    if volume and len(volume) != len(PreprocessCfg.VOLUME_FIELDS):
        raise VlmprobeError(f"{where}: model {name!r} gives preprocess {', '.join(volume)} but a "
                            "volume model needs all of "
                            f"{', '.join(PreprocessCfg.VOLUME_FIELDS)}.")
    if cfg.resize not in PreprocessCfg.RESIZE_MODES:
        raise VlmprobeError(f"{where}: model {name!r} has preprocess.resize={cfg.resize!r}; "
                            f"valid: {', '.join(PreprocessCfg.RESIZE_MODES)}.")
    return cfg


def _parse_file(path: Path) -> dict[str, ModelEntry]:
    entries = {}
    for name, raw in read_yaml_entries(path, "models").items():
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise VlmprobeError(f"{path}: model {name!r} lacks required field(s) {missing}.")
        if not isinstance(raw["preprocess"], dict):
            raise VlmprobeError(f"{path}: model {name!r}: field 'preprocess' must be a mapping "
                                "(image_size, resize, interpolation, stats or mean/std).")
        check_field_types(ModelEntry, path, name, raw)
        raw = {**raw, "preprocess": _parse_preprocess(name, raw["preprocess"], path)}
        entries[name] = build_entry(ModelEntry, path, name, raw)
    return entries


def registry_files(extra: list[Path] | tuple = ()) -> list[Path]:
    env = [Path(p) for p in os.environ.get(REGISTRY_ENV, "").split(os.pathsep) if p]
    return [BUILTIN_REGISTRY, *env, *map(Path, extra)]


def load_registry(extra: list[Path] | tuple = ()) -> dict[str, ModelEntry]:
    """All entries from the built-in registry, ``$VLMPROBE_REGISTRY`` files and ``extra``."""
    return merge_registry_files("model", [(p, _parse_file(p)) for p in registry_files(extra)])


def list_models(pattern: str = "*", registry: list[Path] | tuple = ()) -> list[str]:
    """The model keys matching ``pattern`` (fnmatch), sorted; ``registry``: extra files."""
    return sorted(fnmatch.filter(load_registry(registry), pattern))


RANDOM_SUFFIX = "_random"


def random_twin(entry: ModelEntry, seed: int = 0) -> ModelEntry:
    """``<model>_random``: the same architecture, tap and preprocessing with seeded random weights,
    flagged as a baseline, derived so that no model needs a YAML twin."""
    return replace(entry, name=entry.name + RANDOM_SUFFIX, random_init=True, baseline=True,
                   seed=seed, medical=False,
                   description=f"Null baseline: {entry.name}'s architecture with random weights "
                               f"(seed {seed}).",
                   notes="Loaded through the family's own path (so the checkpoint must be in the "
                         "cache), then every weight replaced: encoders.base.randomize_weights.")


def random_twins(entries: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
    """The derived ``<model>_random`` entry of every non-baseline model whose twin the registry
    does not define itself: what ``vlmprobe models --twins`` lists beside the registry."""
    return {e.name + RANDOM_SUFFIX: random_twin(e) for e in entries.values()
            if not e.baseline and e.name + RANDOM_SUFFIX not in entries}


def get_model_entry(name: str, entries: dict[str, ModelEntry] | None = None,
                    registry: list[Path] | tuple = ()) -> ModelEntry:
    """The entry ``name`` (of ``entries``, else of the registries with the extra files
    ``registry``); ``<model>_random`` resolves to :func:`random_twin` of ``<model>`` unless the
    registry defines that name itself."""
    entries = load_registry(registry) if entries is None else entries
    base = name.removesuffix(RANDOM_SUFFIX)
    if name not in entries and name.endswith(RANDOM_SUFFIX) and base in entries:
        return random_twin(entries[base])
    if name not in entries:
        raise unknown_key_error("model", name, entries)
    return entries[name]


def model_summary(entry: ModelEntry) -> dict:
    """The ``vlmprobe models --json`` object: the headline fields first, then the whole entry."""
    head = {k: getattr(entry, k) for k in ("name", "family", "source", "revision", "tap",
                                           "embed_dim")}
    p = entry.preprocess
    return {**head, "image_size": p.image_size, "gated": entry.gated,
            "trust_remote_code": entry.trust_remote_code, "licence": entry.licence,
            **entry.to_dict(), **{k: getattr(entry, k) for k in entry.LOCATION_FIELDS}}


def markdown_table(entries: dict[str, ModelEntry] | None = None) -> str:
    """The README's model table, generated from the registry (``vlmprobe models --markdown``)."""
    entries = load_registry() if entries is None else entries
    rows = ["| model | family | source | tap | dim | input | licence | gated | remote code |",
            "|---|---|---|---|---|---|---|---|---|"]
    for e in entries.values():
        rows.append(f"| `{e.name}`{' (medical)' if e.medical else ''} | {e.family} | "
                    f"`{e.source}` | {e.tap} | {e.embed_dim} | {e.preprocess.summary} | "
                    f"{e.licence} | {'yes' if e.gated else ''} | "
                    f"{'yes' if e.trust_remote_code else ''} |")
    return "\n".join(rows)
