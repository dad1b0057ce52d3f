"""The study file (YAML): models, datasets with their roots, the stages and their options, the
output folder and how jobs run. Read once and checked before any job starts: unknown models,
datasets, stages and options, duplicates, wrong types and missing roots are errors naming the
file, the line and the fix. The template ``vlmprobe study FILE --init`` writes
(``template.yaml`` beside this module) documents every key; README.md, "Studies", too.

Stage options are the stage's config fields (``ExtractConfig``, ``ProbeConfig``, ``UmapGrid``,
``RiseConfig``) and the keyword parameters of its API calls (:mod:`.stages`), typed by their
annotations: the configs themselves refuse an unknown name, so no list of options lives here.
"""
from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from importlib.resources import files
from pathlib import Path, PurePath

from ..data.dataset import data_root, resolve_dataset
from ..registry import DatasetEntry, get_model_entry, load_registry
from ..validation import VlmprobeError, check_dir, unknown_key_error
from .stages import CLASS_LABEL, STAGES, Settings, Stage, report_stage

#: ``vlmprobe study FILE --init`` copies this, shipped inside the package
TEMPLATE = Path(str(files(__package__) / "template.yaml"))
LAUNCHERS = ("local", "slurm")
_TOP = ("out", "models", "datasets", "stages", "launcher")
_DATASET = ("dataset", "root", "options", "stages")
_LAUNCHER = ("name", "jobs", "cluster", "resources")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the study: ``name`` is its key in the study file, ``dataset`` the registry
    key (the same unless one dataset is studied under several options) or an own dataset,
    ``imagefolder:DIR`` or ``csv:MANIFEST.csv``, whose root is its folder."""

    name: str
    dataset: str
    root: Path
    options: dict  # load_dataset options (datasets.yaml fields): size, label_level, ...
    stages: dict   # this dataset's stage options, over the study's
    skip: frozenset = frozenset()  # stages not run for this dataset (``rise: false``)

    def runs(self, stage: str) -> bool:
        return stage not in self.skip


@dataclass(frozen=True)
class LauncherSpec:
    name: str = "local"
    jobs: int | None = None  # at once; None: local 1, slurm every job that is ready
    cluster: str = "slurm"  # submitit's executor for the slurm launcher ("local": no cluster)
    resources: dict = field(default_factory=dict)  # "all" or a stage -> submitit parameters


@dataclass
class StudySpec:
    """A checked study file; :meth:`settings` gives any job's options."""

    path: Path
    text: str
    out: Path
    models: list[str]
    model_options: dict[str, dict]  # per model: extract options over the study's
    datasets: list[DatasetSpec]
    stages: list[str]               # in run order
    stage_options: dict[str, dict]
    launcher: LauncherSpec
    lines: dict = field(default_factory=dict, repr=False)  # key path -> line, for messages
    report: Settings | None = None  # the study's report, written after its jobs; None: none

    def where(self, *path) -> str:
        """``file:line: a.b.c`` for a key of the file (the nearest line that exists)."""
        keys = tuple(path)
        while keys and keys not in self.lines:
            keys = keys[:-1]
        line = self.lines.get(keys)
        dotted = ".".join(map(str, path))
        return f"{self.path}:{line}: {dotted}" if line else f"{self.path}: {dotted}"

    def dataset(self, name: str) -> DatasetSpec:
        return next(d for d in self.datasets if d.name == name)

    def settings(self, stage: str, dataset: DatasetSpec, model: str | None = None) -> Settings:
        """The options of ``stage`` for one job: the study's, then the dataset's, then (extract)
        the model's, each overriding the one before."""
        layers = [(("stages", stage), self.stage_options.get(stage, {})),
                  (("datasets", dataset.name, "stages", stage), dataset.stages.get(stage, {}))]
        if stage == "extract" and model is not None:
            layers.append((("models", model), self.model_options.get(model, {})))
        merged = {k: v for _, options in layers for k, v in options.items()}
        where = self.where(*next((p for p, o in reversed(layers) if o), layers[0][0]))
        return _settings(STAGES[stage], merged, where)


def load_study(path: str | Path) -> StudySpec:
    """Read and check a study file (see the module docstring)."""
    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text()
    except OSError as e:
        raise VlmprobeError(f"Cannot read the study file {path}: {e}. Write one with `vlmprobe "
                            f"study {path.name} --init`.") from None
    doc, lines = _read_yaml(path, text)
    spec = StudySpec(path, text, Path(), [], {}, [], [], {}, LauncherSpec(), lines)
    if not isinstance(doc, dict):
        raise VlmprobeError(f"{path}: expected a mapping with keys {', '.join(_TOP)} (write a "
                            f"template with `vlmprobe study {path.name} --init`).")
    _known_keys(spec, doc, _TOP, "study key")
    for key in ("out", "models", "datasets"):
        if doc.get(key) is None:
            raise VlmprobeError(f"{path}: no '{key}:' given; the study needs {key} (see `vlmprobe "
                                f"study {path.name} --init` for a commented template).")
    spec.out = _path(spec, doc["out"], ("out",))
    spec.stages, spec.stage_options = _stages(spec, doc.get("stages") or {})
    spec.models, spec.model_options = _models(spec, doc["models"])
    spec.datasets = _datasets(spec, doc["datasets"])
    spec.launcher = _launcher(spec, doc.get("launcher") or {})
    for d in spec.datasets:  # every job's options, checked now rather than when it runs
        for stage in filter(d.runs, spec.stages):
            for model in spec.models if STAGES[stage].per_model else [None]:
                spec.settings(stage, d, model)
        _check_rise_labels(spec, d)
    return spec


def write_template(path: str | Path) -> Path:
    """Copy the commented template to ``path`` (never over an existing file)."""
    path = Path(path)
    if path.exists():
        raise VlmprobeError(f"{path} exists; --init writes a new file only. Give another name, "
                            "or run the study in it without --init.")
    path.write_text(TEMPLATE.read_text())
    return path


# -- reading the YAML with the line of every key ------------------------------------------------
def _read_yaml(path: Path, text: str) -> tuple[object, dict]:
    """The document and ``{key path: line}``; a key given twice in one mapping is an error (plain
    YAML keeps the last silently)."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise VlmprobeError(f"{path} is not valid YAML: {e}") from None
    lines: dict[tuple, int] = {}

    def walk(n, keys: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                line = k.start_mark.line + 1
                if k.value in seen:
                    raise VlmprobeError(
                        f"{path}:{line}: {'.'.join(map(str, keys + (k.value,)))} is given twice "
                        f"(first on line {seen[k.value]}); keep one.")
                seen[k.value] = line
                lines[keys + (_key(k),)] = line
                walk(v, keys + (_key(k),))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[keys + (i,)] = item.start_mark.line + 1
                walk(item, keys + (i,))

    if node is not None:
        lines[()] = 1
        walk(node, ())
    return doc, lines


def _key(node) -> object:
    """A mapping key as yaml.safe_load gives it (an int key stays an int)."""
    import yaml

    return yaml.safe_load(node.value) if node.tag.endswith(":int") else node.value


def _error(spec: StudySpec, keys: tuple, message: str) -> VlmprobeError:
    return VlmprobeError(f"{spec.where(*keys)}: {message}")


def _known_keys(spec: StudySpec, mapping: dict, valid: tuple, kind: str, keys: tuple = ()) -> None:
    for key in mapping:
        if key not in valid:
            raise _error(spec, keys + (key,), str(unknown_key_error(kind, str(key), valid)))


def _mapping(spec: StudySpec, value, keys: tuple, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _error(spec, keys, f"{what} must be a mapping (key: value lines), got "
                                 f"{value!r} ({type(value).__name__}).")
    return value


def _path(spec: StudySpec, value, keys: tuple) -> Path:
    """A path of the study file; a relative one is relative to the file's folder."""
    if not isinstance(value, (str, PurePath)) or not str(value):
        raise _error(spec, keys, f"expected a path, got {value!r}.")
    p = Path(value).expanduser()
    return p if p.is_absolute() else spec.path.parent / p


# -- the sections -------------------------------------------------------------------------------
def _stages(spec: StudySpec, raw) -> tuple[list[str], dict[str, dict]]:
    raw = _mapping(spec, raw, ("stages",), "stages")
    _known_keys(spec, raw, (*STAGES, "report"), "stage", ("stages",))
    if "rise" in raw and "probe" not in raw:
        raise _error(spec, ("stages", "rise"), "rise explains the probes the probe stage saves; "
                                               "add 'probe:' to the stages.")
    chosen = [s for s in STAGES if s in raw or s == "extract"]  # every study extracts
    if "report" in raw:
        where = ("stages", "report")
        report = report_stage()
        spec.report = _settings(report, _options(spec, report, raw["report"], where),
                                spec.where(*where))
    return chosen, {s: _options(spec, STAGES[s], raw.get(s), ("stages", s)) for s in chosen}


def _models(spec: StudySpec, raw) -> tuple[list[str], dict[str, dict]]:
    if isinstance(raw, list):
        raw_items = [(m, None, ("models", i)) for i, m in enumerate(raw)]
    elif isinstance(raw, dict):
        raw_items = [(m, opts, ("models", m)) for m, opts in raw.items()]
    else:
        raise _error(spec, ("models",), "models must be a list of registry keys (or a mapping "
                                        "key -> extract options).")
    if not raw_items:
        raise _error(spec, ("models",), "no models listed; add registry keys (`vlmprobe models`).")
    entries = load_registry()
    models, options, seen = [], {}, {}
    for name, opts, keys in raw_items:
        if not isinstance(name, str):
            raise _error(spec, keys, f"a model is a registry key, got {name!r}.")
        if name in seen:
            raise _error(spec, keys, f"model {name!r} is listed twice (first on line "
                                     f"{spec.lines.get(seen[name])}); keep one.")
        seen[name] = keys
        try:
            get_model_entry(name, entries)
        except VlmprobeError as e:
            raise _error(spec, keys, f"{e} Add it to a registry file ($VLMPROBE_REGISTRY) if it "
                                     "is yours.") from None
        models.append(name)
        options[name] = _options(spec, STAGES["extract"], opts, keys)
    return models, options


def _datasets(spec: StudySpec, raw) -> list[DatasetSpec]:
    raw = _mapping(spec, raw, ("datasets",), "datasets")
    if not raw:
        raise _error(spec, ("datasets",), "no datasets listed; add registry keys (`vlmprobe "
                                          "datasets`) with their root folders.")
    out, seen = [], {}
    for name, entry in raw.items():
        keys = ("datasets", name)
        entry = _mapping(spec, entry, keys, f"dataset {name!r}")
        _known_keys(spec, entry, _DATASET, "dataset key", keys)
        key = entry.get("dataset", name)
        try:  # a registry key (built in or $VLMPROBE_DATASETS), imagefolder:DIR or csv:FILE
            found = resolve_dataset(str(key))
        except VlmprobeError as e:
            hint = (" To study a dataset twice (other options), name it and give 'dataset: <key>'."
                    if "dataset" not in entry else "")
            raise _error(spec, keys + (("dataset",) if "dataset" in entry else ()),
                         f"{e}{hint}") from None
        options = _dataset_options(spec, entry.get("options"), keys + ("options",))
        ident = (key, repr(sorted(options.items())))
        if ident in seen:
            raise _error(spec, keys, f"dataset {key!r} with these options is already listed as "
                                     f"{seen[ident]!r}; keep one (or give other options).")
        seen[ident] = name
        root = (_path(spec, entry["root"], keys + ("root",)) if "root" in entry
                else data_root(found.name, None, found).resolve())
        layout = found.layout_help
        try:
            check_dir(root, f"Dataset root for {name!r}", layout)
        except VlmprobeError as e:
            raise _error(spec, keys + ("root",), f"{e} Fix 'root:' (relative paths are relative "
                                                 f"to {spec.path.parent}).") from None
        stages = _mapping(spec, entry.get("stages"), keys + ("stages",), "stages")
        skip = frozenset(s for s, o in stages.items() if o is False)
        if "extract" in skip:
            raise _error(spec, keys + ("stages", "extract"), "every dataset is extracted; remove "
                                                             "'extract: false'.")
        if "probe" in skip and "rise" in spec.stages and "rise" not in skip:
            raise _error(spec, keys + ("stages", "probe"), "rise explains the probes of the probe "
                                                           "stage; add 'rise: false' as well.")
        for stage, opts in stages.items():
            if stage not in spec.stages:
                raise _error(spec, keys + ("stages", stage),
                             f"the study runs no {stage!r} stage ({', '.join(spec.stages)}); "
                             f"add it under the top-level 'stages:' first." if stage in STAGES
                             else str(unknown_key_error("stage", str(stage), spec.stages)))
        out.append(DatasetSpec(name, key, root, options,
                               {s: _options(spec, STAGES[s], o, keys + ("stages", s))
                                for s, o in stages.items() if s not in skip}, skip))
    return out


def _dataset_options(spec: StudySpec, raw, keys: tuple) -> dict:
    """load_dataset's options: fields of a datasets.yaml entry (e.g. size, label_level)."""
    raw = _mapping(spec, raw, keys, "options")
    valid = tuple(f.name for f in fields(DatasetEntry) if f.name != "name")
    _known_keys(spec, raw, valid, "dataset option", keys)
    hints = typing.get_type_hints(DatasetEntry)
    return {k: _typed(spec, v, hints[k], keys + (k,)) for k, v in raw.items()}


def _launcher(spec: StudySpec, raw) -> LauncherSpec:
    keys = ("launcher",)
    raw = _mapping(spec, {"name": raw} if isinstance(raw, str) else raw, keys, "launcher")
    _known_keys(spec, raw, _LAUNCHER, "launcher key", keys)
    name = raw.get("name", "local")
    if name not in LAUNCHERS:
        raise _error(spec, keys + ("name",), str(unknown_key_error("launcher", str(name),
                                                                   LAUNCHERS)))
    jobs = _typed(spec, raw.get("jobs"), int | None, keys + ("jobs",))
    if jobs is not None and jobs < 1:
        raise _error(spec, keys + ("jobs",), f"jobs at once must be >= 1, got {jobs}.")
    resources = _mapping(spec, raw.get("resources"), keys + ("resources",), "resources")
    _known_keys(spec, resources, ("all", *STAGES), "resources key", keys + ("resources",))
    return LauncherSpec(name, jobs, _typed(spec, raw.get("cluster", "slurm"), str,
                                           keys + ("cluster",)),
                        {s: _mapping(spec, r, keys + ("resources", s), f"resources of {s}")
                         for s, r in resources.items()})


def _check_rise_labels(spec: StudySpec, d: DatasetSpec) -> None:
    """RISE explains saved probes: each label it explains must be one the probe stage fits."""
    if "rise" not in spec.stages or not d.runs("rise") or not d.runs("probe"):
        return
    probed = spec.settings("probe", d).keywords.get("label", [CLASS_LABEL])
    probed = probed if isinstance(probed, list) else [probed]
    explained = spec.settings("rise", d, spec.models[0]).keywords.get("labels", [CLASS_LABEL])
    missing = [x for x in explained if x not in probed]
    if missing:
        raise _error(spec, ("datasets", d.name),
                     f"rise explains label(s) {missing}, but the probe stage fits only "
                     f"{probed} for this dataset; add them to the probe's 'label:' list.")


# -- stage options: config fields and API keywords, typed by their annotations ------------------
def _hints(obj) -> dict:
    try:
        return typing.get_type_hints(obj)
    except (NameError, TypeError):  # an annotation this Python cannot evaluate: left unchecked
        return {}


def _keywords(stage: Stage) -> dict[str, object]:
    """Keyword parameters of the stage's API calls (minus what the study sets) -> annotation."""
    out = {}
    for call in stage.calls:
        hints = _hints(call)
        for p in inspect.signature(call).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) \
                    and p.name not in stage.set_by_study:
                out.setdefault(p.name, hints.get(p.name, typing.Any))
    return out


def _options(spec: StudySpec, stage: Stage, raw, keys: tuple) -> dict:
    """One block of a stage's options, each checked and converted by its annotation."""
    raw = _mapping(spec, raw, keys, f"{stage.name} options")
    fields_ = {f.name for f in fields(stage.config)}
    hints, keywords = _hints(stage.config), _keywords(stage)
    out = {}
    for key, value in raw.items():
        where = keys + (key,)
        if key in stage.set_by_study:
            raise _error(spec, where, f"{key!r} is set by the study itself (inputs, outputs and "
                                      "sharding follow from the study file and the launcher); "
                                      "remove it.")
        if key in fields_:
            out[key] = _typed(spec, value, hints.get(key, typing.Any), where)
        elif key in keywords:
            if key in stage.lists and isinstance(value, list):
                out[key] = [_typed(spec, v, keywords[key], where + (i,))
                            for i, v in enumerate(value)]
            else:
                out[key] = _typed(spec, value, keywords[key], where)
        else:
            try:  # the config refuses an unknown setting in its own words
                stage.config(**{key: value})
            except VlmprobeError as e:
                raise _error(spec, where, f"{e} Besides its settings, {stage.name} takes: "
                                          f"{', '.join(sorted(keywords))}.") from None
    return out


def _settings(stage: Stage, options: dict, where: str) -> Settings:
    names = {f.name for f in fields(stage.config)}
    try:
        config = stage.config(**{k: v for k, v in options.items() if k in names})
        if callable(getattr(config, "check", None)):
            config = config.check()
    except VlmprobeError as e:
        raise VlmprobeError(f"{where}: {e}") from None
    return Settings(config, {k: v for k, v in options.items() if k not in names})


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence):
        return f"a list of {_type_name(args[0])}s" if args else "a list"
    if origin is dict:
        return "a mapping"
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return "a path"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def _typed(spec: StudySpec, value, tp, keys: tuple):
    """``value`` as the annotation ``tp`` wants it (YAML lists become tuples where a tuple is
    wanted, a mapping becomes a config object, a relative path the study folder's), or an error
    naming the line and the type wanted."""
    try:
        return _convert(spec, value, tp)
    except _Mismatch:
        raise _error(spec, keys, f"expected {_type_name(tp)}, got {value!r} "
                                 f"({type(value).__name__}).") from None
    except VlmprobeError as e:  # a config object refusing a setting
        raise _error(spec, keys, str(e)) from None


def _convert(spec: StudySpec, value, tp):
    if tp is typing.Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # a path first: str | Path is a path
        for a in sorted(args, key=lambda a: not (isinstance(a, type) and issubclass(a, PurePath))):
            try:
                return _convert(spec, value, a)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is type(None) or value is None:
        if value is None and tp is type(None):
            return None
        raise _Mismatch
    if tp is bool or isinstance(value, bool):
        if tp is bool and isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int and isinstance(value, int):
        return value
    if tp is float and isinstance(value, (int, float)):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    if isinstance(tp, type) and issubclass(tp, PurePath) and isinstance(value, str):
        return _path(spec, value, ())
    if origin in (tuple, list, collections.abc.Sequence) and isinstance(value, (list, tuple)):
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _Mismatch
            return tuple(_convert(spec, v, a) for v, a in zip(value, args))
        items = [_convert(spec, v, args[0]) if args else v for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict and isinstance(value, dict):
        return value
    if is_dataclass(tp) and isinstance(value, dict):  # a config object, e.g. RISE's ImageChoice
        hints = _hints(tp)
        return tp(**{k: _convert(spec, v, hints.get(k, typing.Any)) for k, v in value.items()})
    raise _Mismatch
