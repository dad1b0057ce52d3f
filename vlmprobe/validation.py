"""User-facing errors and input checks, in one place (as sklearn.utils.validation).

Every check raises :class:`VlmprobeError` with a message that names the offending file or
value and says what to do; the CLI prints it without a traceback and exits non-zero.
"""
from __future__ import annotations

import difflib
import functools
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


class VlmprobeError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""


def unknown_key_error(kind: str, key: str, valid: Iterable[str]) -> VlmprobeError:
    """Error for a registry/dataset key that does not exist, listing the valid ones."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return VlmprobeError(f"Unknown {kind} {key!r}.{hint} Valid {kind}s: {', '.join(valid)}.")


def config(cls):
    """A frozen dataclass of a stage's settings whose constructor (and so ``dataclasses.replace``)
    refuses an unknown field with a :class:`VlmprobeError` naming the class, the close matches and
    every valid field, instead of Python's bare TypeError."""
    cls = dataclass(frozen=True)(cls)
    init = cls.__init__

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        known = [f.name for f in fields(cls)]
        for name in kwargs:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=2)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise VlmprobeError(f"{cls.__name__} has no setting {name!r}.{hint} Its settings: "
                                    f"{', '.join(known)}.")
        init(self, *args, **kwargs)

    cls.__init__ = checked_init
    return cls


def with_options(settings, options: dict):
    """``settings`` (a :func:`config` object) with ``options`` changed: keyword options of a stage
    function land in its config, checked like the config's own fields."""
    return replace(settings, **options) if options else settings


def check_name(value: str, what: str, where: str) -> str:
    """``value`` if it can be one file or folder name of an output: stage outputs are named after
    a cache's model and dataset, so a cache, split or registry file from elsewhere must not
    carry a name with a path separator or ``..`` that would make vlmprobe write outside the
    output directory."""
    if (not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\\" in value
            or "\0" in value):
        raise VlmprobeError(f"{where}: {what} {value!r} is not a plain name (it may not be empty, "
                            "'.', '..' or contain '/', '\\' or NUL): vlmprobe names output files "
                            "after it, so it would write outside the output directory. The file "
                            "was not written by vlmprobe, or was altered; do not use it.")
    return value


def read_npz(path: Path, what: str, fix: str) -> dict[str, np.ndarray]:
    """Every array of an npz file, read now, never unpickling: an object array (a pickle, which
    runs code when loaded) is refused like a damaged file, naming ``what`` it should be and the
    ``fix``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 — numpy's many ways to fail on foreign bytes
        raise VlmprobeError(f"{path} is not a readable {what} ({e}); {fix}") from None


def check_dir(path: Path, what: str, expected_layout: str) -> Path:
    """A directory that exists and is not empty, or an error naming it and the layout wanted."""
    path = Path(path).expanduser()
    if not path.exists():
        raise VlmprobeError(f"{what} {path} does not exist. Expected layout: {expected_layout}")
    if not path.is_dir():
        raise VlmprobeError(f"{what} {path} is not a directory. Expected layout: {expected_layout}")
    if not any(path.iterdir()):
        raise VlmprobeError(f"{what} {path} is empty. Expected layout: {expected_layout}")
    return path


def check_labels_for_cv(labels: Sequence, n_folds: int, test_fraction: float, source: str) -> None:
    """Refuse label vectors a stratified test split + k-fold CV cannot handle."""
    counts = Counter(np.asarray(labels).tolist())
    if len(counts) < 2:
        raise VlmprobeError(
            f"{source}: found {len(counts)} class(es) {dict(counts)}; a probe needs at least 2. "
            "Check the dataset root or the --label column."
        )
    # Each class needs >= 1 image in the test part and >= n_folds in the training part.
    need = n_folds + 1
    while need - int(np.ceil(test_fraction * need)) < n_folds:
        need += 1
    small = {k: v for k, v in counts.items() if v < need}
    if small:
        raise VlmprobeError(
            f"{source}: classes {small} have fewer than {need} samples, too few for a stratified "
            f"{test_fraction:.0%} test split plus {n_folds}-fold cross-validation. Add images, merge "
            "classes, or probe another --label."
        )


def _unique_keys_loader():
    """yaml.SafeLoader refusing a key given twice in one mapping (plain YAML keeps the last one
    silently, so a pasted entry would replace another unseen). Safe: no ``!!python`` tags."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice in one mapping (first on line "
                        f"{seen[key]}); keep one", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def read_yaml_entries(path: Path, section: str) -> dict[str, dict]:
    """``{name: mapping}`` under the top-level ``section`` key of a registry YAML file."""
    import yaml

    try:
        doc = yaml.load(Path(path).read_text(), Loader=_unique_keys_loader())  # noqa: S506 — safe
    except yaml.YAMLError as e:
        raise VlmprobeError(f"{path} is not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise VlmprobeError(f"Cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(section), dict):
        raise VlmprobeError(f"{path}: expected a top-level '{section}:' mapping of name -> entry.")
    for name, raw in doc[section].items():
        if not isinstance(raw, dict):
            raise VlmprobeError(f"{path}: entry {name!r} must be a mapping, got {type(raw).__name__}.")
    return doc[section]


def build_entry(cls, path: Path, name: str, raw: dict):
    """``cls(name=name, **raw)``, or an error naming the file, the entry and the known fields."""
    check_name(name, "entry name", str(path))  # caches and outputs are named after it
    try:
        return cls(name=name, **raw)
    except TypeError as e:
        known = ", ".join(f.name for f in fields(cls) if f.name != "name")
        raise VlmprobeError(f"{path}: entry {name!r}: {e}. Known fields: {known}.") from None


def merge_registry_files(kind: str, parsed: list[tuple[Path, dict]]) -> dict:
    """The entries of registry files, the built-in first: a later file adds entries, and a key
    defined twice is an error naming both files, unless the later entry says
    ``replaces: builtin`` and the earlier one is the built-in's (users correct a shipped entry
    without editing the package)."""
    (builtin, first), *user = parsed
    entries, origin = dict(first), dict.fromkeys(first, Path(builtin))
    for path, parsed_entries in user:
        for name, entry in parsed_entries.items():
            replaces = getattr(entry, "replaces", None)
            if replaces not in (None, "builtin"):
                raise VlmprobeError(f"{path}: {kind} {name!r}: replaces={replaces!r}; the only "
                                    "value is 'builtin' (take the place of the shipped entry).")
            if name in entries and not (replaces == "builtin" and origin[name] == builtin):
                hint = ("" if origin[name] != builtin else
                        ", or add `replaces: builtin` to the entry in "
                        f"{path} to use it instead of the shipped one")
                raise VlmprobeError(f"{kind.capitalize()} {name!r} is defined in {origin[name]} "
                                    f"and again in {path}; rename one{hint}.")
            if replaces == "builtin" and origin.get(name) != builtin:
                raise VlmprobeError(f"{path}: {kind} {name!r} says replaces: builtin, but no "
                                    f"shipped {kind} is called {name!r} ({builtin}).")
            entries[name], origin[name] = entry, Path(path)
    return entries

