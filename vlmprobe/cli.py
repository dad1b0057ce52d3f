"""The ``vlmprobe`` command line: a thin typer layer over the Python API (parse, call, print)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .messages import console, show_messages
from .validation import VlmprobeError

#: results (tables, listings, where outputs went) go to standard output; messages and progress
#: bars to standard error (vlmprobe.messages)
stdout = Console()


def _say(text: str) -> None:
    """One line of results, printed as it is (paths may hold brackets rich takes for markup)."""
    stdout.print(text, soft_wrap=True, highlight=False, markup=False)

app = typer.Typer(help="Measure what medical vision-language encoders really see.",
                  pretty_exceptions_show_locals=False, no_args_is_help=True,
                  add_completion=False)
datasets_app = typer.Typer(help="List the dataset registry, check a copy, write its split, or "
                           "make phantom datasets.",
                           invoke_without_command=True)
app.add_typer(datasets_app, name="datasets")
cache_app = typer.Typer(help="Inspect, compare and merge embedding caches.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

CacheArgs = typer.Argument(None, help="Cache files or directories (default: every cache under "
                                      "--out / $VLMPROBE_CACHE).", show_default=False)
OutOpt = typer.Option(None, "--out", help="Without CACHE arguments: the cache directory to use "
                      "(default $VLMPROBE_CACHE or ~/.cache/vlmprobe), outputs beside the caches. "
                      "With CACHE arguments: where outputs go (default: beside the caches).")
TrustOpt = typer.Option(False, "--trust-remote-code", help="Allow entries that declare "
                        "trust_remote_code to run their hub repo's code (or "
                        "$VLMPROBE_TRUST_REMOTE_CODE=1).")
RegistryOpt = typer.Option(None, "--registry", help="Extra model registry YAML file(s), beside "
                          "$VLMPROBE_REGISTRY (repeatable).")
DatasetsOpt = typer.Option(None, "--datasets", help="Extra dataset registry YAML file(s), beside "
                           "$VLMPROBE_DATASETS (repeatable).")
TapOpt = typer.Option(None, "--tap", help="Which stored tap to use (caches extracted with "
                      "`extract --tap`): a tap name, or 'all' for every tap of every cache (a "
                      "further tap is named <model>@<tap>; default: the entry's own tap).")


def _print_version(value: bool) -> None:
    if value:
        print(f"vlmprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print vlmprobe's version and exit.")):
    """Measure what medical vision-language encoders really see."""
    show_messages("INFO")


@app.command()
def models(
    names: Optional[List[str]] = typer.Argument(None, help="One registry key (with --check); "
                                                "or `fetch NAME...`: download what those "
                                                "entries need from the hub and lock it."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array."),
    check: bool = typer.Option(False, "--check", help="Say per entry whether it can load here "
                               "and why not (packages, token, cached weights, offline); "
                               "downloads nothing."),
    compare_weights: Optional[List[str]] = typer.Option(
        None, "--compare-weights", help="Two keys (give the option twice, or A,B): load both "
        "and compare their vision tensors by content."),
    registry: Optional[List[Path]] = RegistryOpt,
    trust_remote_code: bool = TrustOpt,
    markdown: bool = typer.Option(False, "--markdown", help="Print the README's model table."),
    twins: bool = typer.Option(False, "--twins", help="Also list the derived <model>_random "
                               "null baselines (same architecture, seeded random weights)."),
    update: bool = typer.Option(False, "--update", help="With fetch: lock the hub's current "
                                "files (default: the locked commits, if a lock exists)."),
):
    """List the model registry (or check it, compare two models' vision weights, or fetch
    and lock what models need: `vlmprobe models fetch NAME...`)."""
    from .registry.models import (get_model_entry, load_registry, markdown_table, model_summary,
                                  random_twins)

    entries = load_registry(registry or ())
    if names and names[0] == "fetch":
        from .encoders.fetch import fetch_model

        if len(names) == 1:
            raise VlmprobeError("models fetch: name the models to fetch, e.g. `vlmprobe models "
                                "fetch biomedclip plip` (see `vlmprobe models`).")
        for key in names[1:]:
            for line in fetch_model(get_model_entry(key, entries), update).summary():
                _say(line)
        return
    if names and len(names) > 1:
        raise VlmprobeError(f"models takes one key (with --check), or `fetch NAME...`; got "
                            f"{names}.")
    name = names[0] if names else None
    derived = random_twins(entries)
    if twins:
        entries = {**entries, **derived}
    if markdown:
        print(markdown_table(entries))
        return
    if compare_weights:
        from .encoders.check import compare_weights as compare

        keys = [k for arg in compare_weights for k in arg.split(",") if k]
        if len(keys) != 2:
            raise VlmprobeError(f"--compare-weights needs two model keys, got {keys}.")
        r = compare(*(get_model_entry(k, entries) for k in keys),
                    trust_remote_code=trust_remote_code or None)
        print(json.dumps(r.to_dict(), indent=2)) if as_json else _say(
            f"{r.a} ({r.n_a} vision tensors) vs {r.b} ({r.n_b}): {r.shared} identical at "
            f"float16 precision; max |a-b| over {r.n_same_name} same-name tensors: "
            f"{r.max_abs_diff} -> {r.verdict}")
        return
    if check:
        from .encoders.check import check_entry

        picked = [get_model_entry(name, entries)] if name else list(entries.values())
        results = [check_entry(e, trust_remote_code or None) for e in picked]
        if as_json:
            print(json.dumps([r.to_dict() for r in results], indent=2))
            return
        table = Table("name", "status", "why")
        for r in results:
            files = f" ({len(r.missing_files)} file(s), see --json)" if r.missing_files else ""
            table.add_row(r.name, r.status, escape("; ".join(r.reasons) + files))
        stdout.print(table)
        return
    if as_json:
        print(json.dumps([model_summary(e) for e in entries.values()], indent=2, default=str))
        return
    table = Table("name", "family", "source", "dim", "input", "medical", "notes", caption=None if
                  twins else f"Each model X also has X_random, a seeded random-weights null "
                             f"baseline ({len(derived)} derived; list them with --twins).")
    for e in entries.values():
        notes = ", ".join(n for n, on in (("baseline", e.baseline), ("gated", e.gated),
                                          ("remote code", e.trust_remote_code)) if on)
        table.add_row(e.name, e.family, e.source, str(e.embed_dim),
                      f"{e.preprocess.image_size} {e.preprocess.resize}", "yes" if e.medical else "",
                      notes)
    stdout.print(table)


@datasets_app.callback()
def datasets(ctx: typer.Context, user_files: Optional[List[Path]] = DatasetsOpt):
    """List the dataset registry (datasets.yaml and user files)."""
    if ctx.invoked_subcommand is not None:
        return
    from .registry import load_datasets

    table = Table("name", "paper name", "modality", "classes", "expected N", "layout", "groups")
    for e in load_datasets(user_files or ()).values():
        n = sum(e.expected_counts.values()) if e.expected_counts else e.expected_total
        table.add_row(e.name, e.paper_name, e.modality, str(len(e.classes) or "from CSV"),
                      f"{n:,}" if n else "-", e.layout, (e.group_key or "-").split(" (")[0])
    stdout.print(table)


@datasets_app.command("make-phantom")
def make_phantom_cmd(
    dataset: str = typer.Argument(..., help="Which dataset to imitate: any of the eight "
                                  "(brainmr, sarscov2ct, pneumoniamnist, breastus, breakhis, "
                                  "hicervix, deepdrid, isic2019), ctdicom, or ct3d (CT "
                                  "volumes)."),
    out: Path = typer.Option(..., "--out", help="Directory to write the phantom dataset into."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of images (default 600 for "
                                    "breastus, 40 volumes for ct3d, 120 for the others)."),
    seed: int = typer.Option(0, "--seed"),
    text_label_correlation: float = typer.Option(
        0.8, "--text-label-correlation",
        help="r in [0,1]: probability that the burnt-in word (breastus) or the site mark "
             "(the others) is the class's (see README)."),
    size: int = typer.Option(28, "--size", help="MedMNIST image size (pneumoniamnist)."),
    min_per_class: int = typer.Option(3, "--min-per-class", help="Fewest images per class (7: "
                                      "every class can be probed, e.g. ISIC's rare ones at "
                                      "--n 120); the others keep the real proportions."),
):
    """Write a phantom dataset in the real on-disk layout, with known ground truth."""
    from .data.phantoms import make_phantom

    path = make_phantom(dataset, out, n=n, seed=seed, text_label_correlation=text_label_correlation,
                        size=size, min_per_class=min_per_class)
    _say(f"Phantom {dataset} (seed {seed}) written to {path}")


DatasetArg = typer.Argument(..., help="A registry key (see `vlmprobe datasets`), or your own: "
                            "imagefolder:DIR (one folder per class) or csv:MANIFEST.csv.")


@datasets_app.command("qc-volumes")
def qc_volumes_cmd(
    model: str = typer.Argument(..., help="A 3-D encoder (merlin, astra): its transform is used, "
                                "its weights are not loaded."),
    dataset: str = DatasetArg,
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root."),
    out: Path = typer.Option(Path("qc"), "--out", help="Directory for the figures."),
    n: int = typer.Option(3, "--n", help="How many volumes (the first n listed)."),
):
    """Orthogonal slices of volumes as the 3-D model sees them (after its transform), through
    the lesion where the manifest gives one: <out>/<dataset>.<model>.qc<k>.png/.svg."""
    from .data.volume_qc import volume_qc

    paths = volume_qc(model, dataset, root, out=out, n=n)
    _say(f"{len(paths) // 2} QC figure(s) written to {out}")
NameOpt = typer.Option(None, "--name", help="Key of an own dataset (default: <folder or file "
                       "name>-<8 hex of its resolved path>); caches and splits live under it.")
PathColumnOpt = typer.Option(None, "--path-column", help="csv:FILE: the column of image paths "
                             "(default 'path'), relative to the manifest's folder or --root.")
LabelColumnOpt = typer.Option(None, "--label-column", help="csv:FILE: the column of class names "
                              "(default 'label').")
GroupColumnOpt = typer.Option(None, "--group-column", help="csv:FILE: the patient id column, so "
                              "grouped splits keep a patient on one side.")
MetaColumnsOpt = typer.Option(None, "--meta-columns", help="csv:FILE: comma list of the columns "
                              "kept as metadata (default: every other column).")
SliceStepOpt = typer.Option(None, "--slice-step", help="Volumes (NIfTI, DICOM series): every "
                            "k-th axial slice (default 1).")
DicomSeriesOpt = typer.Option(False, "--dicom-series", help="Read each folder of .dcm files as "
                              "one series (axial slices after RAS orientation), not as images.")
VolumeOpt = typer.Option(None, "--volume", help="Volumes: 'slices' (axial 2-D samples, the "
                         "default) or 'whole' (one sample per volume, for 3-D encoders).")
LabelLevelOpt = typer.Option(None, "--label-level", help="Level of a label hierarchy (HiCervix: "
                             "1, 2 or 3; default the entry's).")
ClassesOpt = typer.Option(None, "--classes", help="Comma list: only these classes (e.g. the "
                          "microbe subclasses); part of the cache and split identity.")
SizeOpt = typer.Option(None, "--size", help="MedMNIST image size 28/64/128/224 (a recorded choice; "
                       "the paper does not state it).")
WindowOpt = typer.Option(None, "--dicom-window", help="DICOM window: tags | minmax | CENTER,WIDTH.")


def _own_options(name, path_column, label_column, group_column, meta_columns, slice_step,
                 dicom_series, volume=None) -> dict:
    """The own-dataset options every dataset command takes, as :func:`load_dataset` options."""
    from .data import dataset_options

    return dataset_options(name=name, path_column=path_column, label_column=label_column,
                           group_column=group_column, meta_columns=meta_columns,
                           slice_step=slice_step, dicom_series=dicom_series, volume=volume)


@datasets_app.command("info")
def info_cmd(
    dataset: str = DatasetArg,
    user_files: Optional[List[Path]] = DatasetsOpt,
    name: Optional[str] = NameOpt, path_column: Optional[str] = PathColumnOpt,
    label_column: Optional[str] = LabelColumnOpt, group_column: Optional[str] = GroupColumnOpt,
    meta_columns: Optional[str] = MetaColumnsOpt, slice_step: Optional[int] = SliceStepOpt,
    dicom_series: bool = DicomSeriesOpt, volume: Optional[str] = VolumeOpt,
):
    """What a dataset is, where to get it (source, licence) and the folder structure expected."""
    from .data.dataset import resolve_dataset, root_rule

    entry = resolve_dataset(dataset, user_files or (), **_own_options(
        name, path_column, label_column, group_column, meta_columns, slice_step, dicom_series,
        volume))
    _say(entry.describe())
    _say(root_rule(entry))


@datasets_app.command("check")
def check_cmd(
    dataset: str = DatasetArg,
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root (default "
                                        "$VLMPROBE_DATA/<dataset>)."),
    split: Optional[Path] = typer.Option(None, "--split", help="A saved split file (.csv): also "
                                         "report duplicates and patients crossing train/test."),
    strict: bool = typer.Option(False, "--strict", help="Counts unlike the paper's are errors."),
    near: int = typer.Option(6, "--near-threshold", help="dHash bits (of 64) within which two "
                             "images are near duplicates."),
    workers: int = typer.Option(1, "--workers", help="Decoding processes."),
    label_level: Optional[int] = LabelLevelOpt, classes: Optional[str] = ClassesOpt,
    size: Optional[int] = SizeOpt, dicom_window: Optional[str] = WindowOpt,
    user_files: Optional[List[Path]] = DatasetsOpt,
    name: Optional[str] = NameOpt, path_column: Optional[str] = PathColumnOpt,
    label_column: Optional[str] = LabelColumnOpt, group_column: Optional[str] = GroupColumnOpt,
    meta_columns: Optional[str] = MetaColumnsOpt, slice_step: Optional[int] = SliceStepOpt,
    dicom_series: bool = DicomSeriesOpt, volume: Optional[str] = VolumeOpt,
):
    """Verify a dataset copy: counts, unreadable files, duplicates, split leakage (exit 1 on errors)."""
    from collections import Counter

    from .data import dataset_options
    from .data.check import check_dataset

    r = check_dataset(dataset, root, split=split, strict=strict, near_threshold=near,
                      workers=workers, datasets=user_files or (),
                      **dataset_options(label_level, classes, size, dicom_window),
                      **_own_options(name, path_column, label_column, group_column, meta_columns,
                                     slice_step, dicom_series, volume))
    _say(f"{r.dataset}: {r.n_images} images listed under {r.root}")
    table = Table("class", "found", "expected")
    for c, (n, e) in r.counts.items():
        style = "red" if n == 0 and e != 0 else "yellow" if e is not None and n != e else ""
        table.add_row(c, f"[{style}]{n:,}[/]" if style else f"{n:,}", "-" if e is None else f"{e:,}")
    stdout.print(table)
    colour = {"error": "bold red", "warning": "yellow", "info": "dim"}
    if r.findings:
        kinds = Counter((f.level, f.kind) for f in r.findings)
        summary = Table("level", "finding", "count", title="findings")
        for (level, kind), n in kinds.items():
            summary.add_row(f"[{colour[level]}]{level}[/]", kind, str(n))
        stdout.print(summary)
    for f in r.findings:  # unwrapped, so each path stays one greppable line
        stdout.print(f"[{colour[f.level]}]{f.level}[/] {f.kind}: {escape(f.message)}",
                     soft_wrap=True, highlight=False)
    _say(f"{len(r.errors)} error(s), {len(r.warnings)} warning(s)"
         + (f"; split {r.split}" if r.split else ""))
    if not r.ok:
        raise typer.Exit(1)


@datasets_app.command("split")
def split_cmd(
    dataset: str = DatasetArg,
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache directory (default "
                                       "$VLMPROBE_CACHE); the split goes to <out>/<dataset>/splits."),
    grouping: str = typer.Option("paper", "--split", help="paper (stratified, ungrouped: the "
                                 "paper's) | grouped (by patient id, else near-duplicate cluster)."),
    seed: int = typer.Option(0, "--seed"),
    repeats: int = typer.Option(1, "--repeats", help="Write the splits of seeds seed .. "
                                "seed+R-1, as `vlmprobe probe --repeats R` reads them."),
    workers: int = typer.Option(1, "--workers", help="Decoding processes (near-duplicate groups)."),
    label_level: Optional[int] = LabelLevelOpt, classes: Optional[str] = ClassesOpt,
    size: Optional[int] = SizeOpt, dicom_window: Optional[str] = WindowOpt,
    user_files: Optional[List[Path]] = DatasetsOpt,
    name: Optional[str] = NameOpt, path_column: Optional[str] = PathColumnOpt,
    label_column: Optional[str] = LabelColumnOpt, group_column: Optional[str] = GroupColumnOpt,
    meta_columns: Optional[str] = MetaColumnsOpt, slice_step: Optional[int] = SliceStepOpt,
    dicom_series: bool = DicomSeriesOpt, volume: Optional[str] = VolumeOpt,
):
    """Write the shared train/test split(s) of a dataset and report the groups that cross them."""
    from .data import dataset_options
    from .data.check import dataset_split

    for r in dataset_split(dataset, root, out, grouping=grouping, seed=seed, workers=workers,
                           repeats=repeats, datasets=user_files or (),
                           **dataset_options(label_level, classes, size, dicom_window),
                           **_own_options(name, path_column, label_column, group_column,
                                          meta_columns, slice_step, dicom_series, volume)):
        _say(f"Split ({r.grouping}, seed {r.split.spec.seed}): {r.split.path}")
        msg = f"{r.n_crossing} of {r.n_groups} groups ({r.group_source}) cross train/test"
        stdout.print(f"[bold red]warning:[/] {escape(msg)}" if r.n_crossing else escape(msg))


@app.command()
def extract(
    model: str = typer.Option(..., "--model", help="Registry key (see `vlmprobe models`)."),
    dataset: str = typer.Option(..., "--dataset", help="A registry key (see `vlmprobe "
                                "datasets`), or your own: imagefolder:DIR or csv:MANIFEST.csv."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root (default "
                                        "$VLMPROBE_DATA/<dataset>)."),
    out: Optional[Path] = OutOpt,
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help="Images per batch "
                                             "(default 32; 1 for whole volumes), or 'auto' (GPU: "
                                             "largest that fits; CPU: fastest of a few, timed)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decoding worker processes "
                                          "beside the model (default: chosen; on a CPU, one "
                                          "process per core decodes and encodes)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a cache made from other inputs."),
    label_level: Optional[int] = LabelLevelOpt, classes: Optional[str] = ClassesOpt,
    size: Optional[int] = SizeOpt, dicom_window: Optional[str] = WindowOpt,
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 | bf16 (autocast; "
                                  "fp16 needs a GPU). Part of the cache key."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: embed every n-th batch "
                                        "into a shard cache (default under torchrun: RANK/"
                                        "WORLD_SIZE); the last shard to finish merges."),
    fast_decode: bool = typer.Option(False, "--fast-decode", help="Do the transform's resize "
                                     "with torch's uint8 antialiased kernel instead of PIL's "
                                     "(≈ 2x cheaper decode + transform; embeddings differ by a "
                                     "grey level, see `cache compare`); on a CUDA GPU, decode "
                                     "JPEGs there (nvJPEG) and transform them there."),
    trust_remote_code: bool = TrustOpt,
    intensity: str = typer.Option("8bit", "--intensity", help="8bit (default: every image as "
                                  "8-bit RGB into the official transform) | float (12/16-bit and "
                                  "DICOM levels unrounded, through a float version of the "
                                  "transform; cache <model>@float.h5 beside the 8-bit one)."),
    tap: Optional[str] = typer.Option(None, "--tap", help="Further taps of the same forward "
                                      "pass, comma-separated, as the family names them (e.g. "
                                      "pooled,cls_mean_patch for a timm ViT); stored beside the "
                                      "entry's own tap (/taps/<tap>)."),
    profile: bool = typer.Option(False, "--profile", help="Print where the wall time went "
                                 "(fingerprint, model load, waiting for batches, forward, chunk "
                                 "writes, consolidation)."),
    registry: Optional[List[Path]] = RegistryOpt,
    user_files: Optional[List[Path]] = DatasetsOpt,
    name: Optional[str] = NameOpt, path_column: Optional[str] = PathColumnOpt,
    label_column: Optional[str] = LabelColumnOpt, group_column: Optional[str] = GroupColumnOpt,
    meta_columns: Optional[str] = MetaColumnsOpt, slice_step: Optional[int] = SliceStepOpt,
    dicom_series: bool = DicomSeriesOpt, volume: Optional[str] = VolumeOpt,
):
    """Embed every image of a dataset with one model into an HDF5 cache (resumable: re-run
    the same command after a crash to continue)."""
    from .data import dataset_options
    from .extraction import ExtractConfig
    from .extraction import extract as run

    cfg = ExtractConfig(batch_size=batch_size if batch_size in ("auto", None)
                        else _positive_int(batch_size, "--batch-size"),
                        device=device, num_workers=workers, precision=precision, shard=shard,
                        fast_decode=fast_decode, taps=tap)
    r = run(model, dataset, root=root, out=out, config=cfg, force=force,
            dataset_options={**dataset_options(label_level, classes, size, dicom_window, intensity),
                             **_own_options(name, path_column, label_column, group_column,
                                            meta_columns, slice_step, dicom_series, volume)},
            trust_remote_code=trust_remote_code or None, registry=registry or (),
            datasets=user_files or ())
    _say(r.summary())
    for line in r.profile_lines() if profile else ():
        _say(line)


def _positive_int(value: str, option: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise VlmprobeError(f"{option} {value!r}: give a positive integer or 'auto'.") from None


@app.command()
def probe(
    caches: Optional[List[Path]] = CacheArgs,
    out: Optional[Path] = OutOpt,
    label: Optional[str] = typer.Option(None, "--label", help="Probe a metadata column instead "
                                        "of the class (e.g. the burnt-in word)."),
    seed: int = typer.Option(0, "--seed", help="Split seed."),
    split: str = typer.Option("paper", "--split", help="paper (stratified, ungrouped: the "
                              "paper's) | grouped (no patient id crosses train/test; needs the "
                              "cache's group column or a `datasets split --split grouped` file)."),
    solver: str = typer.Option("fast", "--solver", help="fast (vlmprobe.probe.svm: LinearSVC's "
                               "objective solved to its optimum by active-set Newton, ~24x "
                               "faster) or sklearn (LinearSVC itself with the paper's defaults, "
                               "tol 1e-4 and max_iter 1000, which can stop early at large C)."),
    device: str = typer.Option("auto", "--device", help="Where the fast solver runs: auto (a "
                               "CUDA GPU when torch sees one, else numpy) | numpy | cpu (torch) "
                               "| cuda[:i]. Recorded per fit."),
    jobs: int = typer.Option(0, "--jobs", help="Folds fitted at once by the fast solver on "
                             "numpy (0: one per core); answers do not depend on it."),
    repeats: int = typer.Option(1, "--repeats", help="Outer test splits (seeds seed, seed+1, "
                                "...); tables then give mean ± sd over them."),
    shuffle_labels: bool = typer.Option(False, "--shuffle-labels", help="Null control: permute "
                                        "the training labels (must land at chance)."),
    subgroups: Optional[List[str]] = typer.Option(None, "--subgroup", help="Also report every "
                                                  "metric per value of this metadata column "
                                                  "(repeatable; e.g. sex, age, site)."),
    compare_paper: bool = typer.Option(False, "--compare-paper", help="Add a table of our cells "
                                       "against the paper's Tables 3/4, with the difference's CI."),
    n_bootstrap: int = typer.Option(2000, "--bootstrap", help="Resamples of the test images for "
                                    "CIs and paired comparisons."),
    bootstrap_unit: str = typer.Option("auto", "--bootstrap-unit", help="What the bootstrap "
                                       "resamples: group (patients or lesions, the cache's group "
                                       "column) | image | auto (group where the cache has "
                                       "groups, else image)."),
    kind: str = typer.Option("svm", "--probe", help="svm (the paper's) | logreg (same C grid) | "
                             "knn (cosine, k in 1,5,10,20,50)."),
    t_grid: str = typer.Option("1,10,100,1000,10000", "--t-grid", help="Comma list of t in "
                               "C = t·d/N (the paper's grid by default)."),
    select: str = typer.Option("mean", "--select", help="mean (the paper's: one t by mean "
                               "validation F1) | per_fold (each fold-model its own t)."),
    few_shot: int = typer.Option(0, "--few-shot", help="k > 0: fit on k training images per "
                                 "class (first t of the grid), --draws seeded draws."),
    draws: int = typer.Option(10, "--draws", help="Few-shot draws."),
    pca_dim: int = typer.Option(0, "--pca-dim", help="The pixels baseline's d: PCA inside each "
                                "fold (default: one row per d of the other models' caches)."),
    tap: Optional[str] = TapOpt,
):
    """Linear-SVM probe by the paper's protocol; writes tables and the refit probes."""
    from .probe import ProbeConfig, run_probe

    cfg = ProbeConfig(solver=solver, device=device, n_jobs=jobs, repeats=repeats,
                      shuffle_labels=shuffle_labels, subgroups=tuple(subgroups or ()),
                      n_bootstrap=n_bootstrap, bootstrap_unit=bootstrap_unit, seed=seed,
                      probe=kind, select=select, t_grid=_t_grid(t_grid), few_shot=few_shot,
                      draws=draws, pca_dim=pca_dim, split=split)
    md, csv_path = run_probe(caches, cfg, label=label, out=out, tap=tap).save(
        compare_paper=compare_paper)
    _say(f"Table: {md} and {csv_path}")


def _t_grid(text: str) -> tuple[float, ...]:
    try:
        grid = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise VlmprobeError(f"--t-grid {text!r}: give positive numbers separated by commas, "
                            "e.g. 1,10,100.") from None
    if not grid or min(grid) <= 0:
        raise VlmprobeError(f"--t-grid {text!r}: every t must be > 0.")
    return grid


@app.command()
def umap(
    caches: Optional[List[Path]] = CacheArgs,
    out: Optional[Path] = OutOpt,
    metric: str = typer.Option("cosine", "--metric"),
    n_neighbors: Optional[str] = typer.Option(None, "--n-neighbors", help="Comma list, e.g. "
                                              "5,15,50 (the default)."),
    min_dist: Optional[str] = typer.Option(None, "--min-dist", help="Comma list, e.g. 0.0,0.1,0.5 "
                                           "(the default)."),
    seed: int = typer.Option(0, "--seed"),
    color_by: Optional[List[str]] = typer.Option(None, "--color-by", help="Also colour by this "
                                                 "metadata column (repeatable)."),
    jobs: int = typer.Option(0, "--jobs", help="Processes fitting configurations (0: one per CPU "
                             "core); the coordinates do not depend on it."),
    tap: Optional[str] = TapOpt,
    fast: bool = typer.Option(False, "--fast", help="UMAP without a seed: multi-threaded, faster, "
                              "coordinates differ run to run (files and titles say 'fast')."),
    thumbnails: int = typer.Option(0, "--thumbnails", help="Place this many example images "
                                   "(seeded, classes taking turns) beside their points."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset folder to read images from "
                                        "(thumbnails, HTML); default: where the cache was made."),
):
    """UMAP maps of each cache over the n_neighbors x min_dist grid: maps (PNG, SVG, interactive
    HTML), grid figure, metrics; caches of one dataset also side by side."""
    from .maps import UmapGrid, run_umap

    run = run_umap(caches, UmapGrid.parse(metric, n_neighbors, min_dist, seed, fast), out=out,
                   tap=tap, color_by=color_by or [], jobs=jobs, thumbnails=thumbnails, root=root)
    for maps in run:
        _say(f"Maps of {maps.cache.model} / {maps.cache.dataset}: {maps.figures[0].parent} "
             f"(metrics {maps.metrics_files[0].name})")
    for png in run.comparisons:
        _say(f"Models side by side: {png}")


@app.command()
def rise(
    caches: Optional[List[Path]] = CacheArgs,
    out: Optional[Path] = OutOpt,
    images: Optional[int] = typer.Option(None, "--images", help="How many test images, classes "
                                         "taken in turn (default: one per class)."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma list of image relpaths to "
                                      "explain instead."),
    misclassified: bool = typer.Option(False, "--misclassified", help="Only test images the "
                                       "probe gets wrong."),
    label: Optional[List[str]] = typer.Option(None, "--label", help="Probe(s) to explain: class "
                                              "(default) or a column probed with `probe --label`; "
                                              "repeat to score several on the same masks."),
    target: Optional[str] = typer.Option(None, "--target", help="Class to explain (default: "
                                         "the predicted one)."),
    n_masks: int = typer.Option(4096, "--n-masks"),
    s: int = typer.Option(8, "--s", help="Mask grid size."),
    p: float = typer.Option(0.5, "--p", help="Keep probability of a grid cell."),
    fill: str = typer.Option("mean", "--fill", help="mean | black | blur: what masked pixels "
                             "become (blur: a Gaussian-blurred copy of the image)."),
    blur_sigma: float = typer.Option(0.045, "--blur-sigma", help="--fill blur's sigma as a "
                                     "fraction of the input's shorter side (0.045: 10 px at 224)."),
    score: str = typer.Option("decision", "--score", help="decision | softmax"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Masked images per "
                                             "forward (default: chosen for the device)."),
    text_boxes: Optional[Path] = typer.Option(None, "--text-boxes", help="CSV relpath,x0,y0,x1,y1"
                                              " of burnt-in text, scored like lesion masks."),
    detect_text: bool = typer.Option(False, "--detect-text", help="Find burnt-in text boxes with "
                                     "vlmprobe's overlay detector where the dataset has none."),
    causal_steps: int = typer.Option(50, "--causal-steps", help="Deletion/insertion curve steps "
                                     "(0: skip)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root, if it moved since "
                                        "extraction."),
    device: str = typer.Option("auto", "--device"),
    include_baselines: bool = typer.Option(False, "--include-baselines",
                                           help="Also explain null-baseline caches."),
    trust_remote_code: bool = TrustOpt,
    tap: Optional[str] = TapOpt,
):
    """RISE saliency through preprocessing -> encoder -> scaler -> SVM, on original images."""
    from .rise import ImageChoice, RiseConfig, run_rise

    cfg = RiseConfig(n_masks=n_masks, s=s, p=p, fill=fill, score=score, seed=seed,
                     batch_size=batch_size, blur_sigma=blur_sigma)
    choice = ImageChoice(k=images, ids=tuple(x.strip() for x in ids.split(",") if x.strip())
                         if ids else (), misclassified=misclassified)
    run = run_rise(caches, cfg, choice=choice, labels=label or ["class"], target=target,
                   root=root, device=device, out=out, text_boxes=text_boxes,
                   detect_text=detect_text, causal_steps=causal_steps,
                   include_baselines=include_baselines,
                   trust_remote_code=trust_remote_code or None, tap=tap)
    for maps in run:
        _say(f"RISE of {maps.cache.model} / {maps.cache.dataset}: overview {maps.figure}, "
             f"panels {maps.panels}, numbers {maps.table}")


@cache_app.command("info")
def cache_info_cmd(cache: Path = typer.Argument(..., help="A cache (or shard) file."),
                   as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Provenance, counts, unreadable files and key of one cache."""
    from .cache.tools import cache_info, format_info

    info = cache_info(cache)
    print(json.dumps(info, indent=2, default=str) if as_json else format_info(info))


@cache_app.command("ls")
def cache_ls_cmd(directory: Optional[Path] = typer.Argument(None, help="Default: --out / "
                                                            "$VLMPROBE_CACHE."),
                 out: Optional[Path] = typer.Option(None, "--out", help="The cache directory.")):
    """Every cache, shard and interrupted extraction under a directory."""
    from .cache import cache_dir
    from .cache.tools import list_caches

    rows = list_caches(directory or cache_dir(out))
    table = Table("path", "model", "dataset", "n", "skipped", "dim", "precision", "status")
    for r in rows:
        table.add_row(*(str(r.get(k, "")) for k in ("path", "model", "dataset", "n", "skipped",
                                                    "dim", "precision", "status")))
    stdout.print(table)


@cache_app.command("compare")
def cache_compare_cmd(a: Path = typer.Argument(..., help="Cache A (its saved probe is used)."),
                      b: Path = typer.Argument(..., help="Cache B, of the same images."),
                      as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Per-image cosine similarity of two caches, and how many probe predictions change."""
    from .cache.tools import compare_caches, format_compare

    r = compare_caches(a, b)
    print(json.dumps(r, indent=2) if as_json else format_compare(r))


@cache_app.command("merge")
def cache_merge_cmd(shards: List[Path] = typer.Argument(..., help="Shard files "
                                                        "<model>.h5.shard-i-of-n, all n."),
                    keep: bool = typer.Option(False, "--keep", help="Keep the shard files.")):
    """Join the shard caches of one `extract --shard` run into one cache (checks keys, coverage)."""
    from .extraction import merge_shards

    _say(f"Merged into {merge_shards(shards, remove=not keep)}")


@cache_app.command("import")
def cache_import_cmd(
    features: Path = typer.Argument(..., help="Embeddings from another tool: .npy / .npz / .pt "
                                    "[N, d] (rows in the labels CSV's order), TRIDENT .h5 "
                                    "(features, coords; a file per slide, or their folder), "
                                    "or an eva embeddings manifest .csv."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="The labels CSV (not for an "
                                          "eva manifest, which has its targets)."),
    model: str = typer.Option(..., "--model", help="The model name the cache is filed under."),
    dataset: str = typer.Option(..., "--dataset", help="The dataset name the cache is filed "
                                "under (caches of one dataset pair in probe tables)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The cache directory (default "
                                       "$VLMPROBE_CACHE or ~/.cache/vlmprobe)."),
    per: str = typer.Option("slide", "--per", help="TRIDENT .h5: slide (one sample per slide, "
                            "patches pooled) | patch (one per patch, grouped by slide)."),
    pool: str = typer.Option("mean", "--pool", help="How a slide's patch rows become one: mean "
                             "(each patch weighs the same) | max (elementwise)."),
    id_column: str = typer.Option("id", "--id-column", help="Labels CSV: the sample ids (a "
                                  "TRIDENT file's stem); without it, row numbers."),
    label_column: str = typer.Option("label", "--label-column", help="Labels CSV: the class "
                                     "names."),
    group_column: Optional[str] = typer.Option(None, "--group-column", help="Labels CSV: the "
                                               "patient ids (grouped splits)."),
    meta_columns: Optional[str] = typer.Option(None, "--meta-columns", help="Labels CSV: comma "
                                               "list kept as metadata (default: the others)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing cache."),
):
    """Turn embeddings another tool computed, with their labels, into a vlmprobe cache that
    probe and umap read (rise needs the encoder, so it refuses an imported cache)."""
    from .cache.imported import import_features

    path = import_features(features, labels, model=model, dataset=dataset, out=out, per=per,
                           pool=pool, id_column=id_column, label_column=label_column,
                           group_column=group_column, force=force,
                           meta_columns=[c.strip() for c in meta_columns.split(",") if c.strip()]
                           if meta_columns is not None else None)
    _say(f"Imported {features} into {path}")


@app.command()
def study(
    file: Path = typer.Argument(..., help="The study file (YAML): models, datasets with their "
                                "roots, stages and options, output folder, launcher."),
    init: bool = typer.Option(False, "--init", help="Write a commented template to FILE and "
                              "exit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the jobs, what is already done "
                                 "and the time left (from measured img/s); run nothing."),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="local (processes on this "
                                           "machine) | slurm (submitit); default: the file's."),
    jobs: Optional[int] = typer.Option(None, "--jobs", help="Jobs at once (local: processes, "
                                       "default 1; slurm: queued, default all that are ready)."),
    rerun: bool = typer.Option(False, "--rerun", help="Run every job again, also those the run "
                               "record shows done (extraction still keeps valid caches)."),
):
    """Every stage for every model x dataset of a study file: extract -> probe -> umap -> rise,
    resumable (run again to continue), one failing job failing only what needs it."""
    from .study import plan_study, run_study, write_template

    if init:
        _say(f"Study template written to {write_template(file)}; fill in models, datasets and "
             f"roots, then run `vlmprobe study {file} --dry-run`.")
        return
    if dry_run:
        stdout.print(plan_study(file, rerun=rerun).table())
        return
    run = run_study(file, launcher=launcher, jobs=jobs, rerun=rerun)
    stdout.print(run.table())
    _say(f"Run record: {run.record}")
    if run.interrupted:
        raise typer.Exit(130)
    if not run.ok:
        failed = sum(s.status == "failed" for s in run.states)
        _say(f"{failed} job(s) failed; fix the cause named in their logs and run the same "
             "command again: finished jobs are skipped.")
        raise typer.Exit(1)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Where the demo writes everything."),
    n: int = typer.Option(600, "--n", help="Images of the BUSI phantom."),
    site_n: int = typer.Option(120, "--site-n", help="Images of the brain MRI phantom."),
    seed: int = typer.Option(0, "--seed", help="Phantom seed."),
    n_masks: int = typer.Option(1024, "--n-masks", help="RISE masks per image."),
    images: int = typer.Option(3, "--images", help="Images explained with RISE (one fewer on "
                               "the brain MRI phantom)."),
):
    """The offline demo, a small study: two phantoms -> extract -> probe -> umap -> rise ->
    summary (run again to continue where it stopped)."""
    from .demo import run_demo

    summary, report = run_demo(out, n=n, site_n=site_n, seed=seed, n_masks=n_masks,
                               n_images=images)
    console.rule("summary")
    _say(summary.read_text())
    _say(f"Demo finished. Summary: {summary}")
    _say(f"Report: {report}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A study's output folder (with run_record.json) "
                                   "or a cache directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="The report's folder (default: "
                                       "RUN_DIR/report)."),
    bandwidth: float = typer.Option(0.5, "--bandwidth", help="RBF CKA: σ as a fraction of the "
                                    "median pairwise distance."),
    rbf_images: int = typer.Option(2000, "--rbf-images", help="RBF CKA: at most this many "
                                   "images (a seeded subsample)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the RBF subsample."),
    audit: bool = typer.Option(True, "--audit/--no-audit", help="Fit the shuffled-label floors "
                               "and the nuisance probes of the background-bias audit."),
    embed: Optional[bool] = typer.Option(None, "--embed/--link", help="Figures and maps inside "
                                         "the HTML, or linked beside it (default: embedded up to "
                                         "50 MB)."),
):
    """One self-contained HTML report of a study (and its Markdown twin): probe tables, the
    paper's numbers, UMAP, RISE, a background-bias audit, CKA, provenance."""
    from .report import write_report

    html, md = write_report(run_dir, out=out, bandwidth=bandwidth, rbf_images=rbf_images,
                            seed=seed, audit=audit, embed=embed)
    _say(f"Report: {html} (Markdown: {md})")


#: what Ctrl-C prints: every output is written beside and renamed, so none is left half-written
RESUME_HINT = ("interrupted: nothing half-written was left behind. Run the same command again "
               "to resume: finished outputs are kept, extract continues from its finished chunks "
               "and umap from its saved coordinates.")


def main() -> None:
    import signal

    logging.captureWarnings(True)  # Python warnings (e.g. unreadable thumbnails) as messages
    interrupted = []

    def on_sigint(signum, frame):  # note it, then Python's own KeyboardInterrupt
        interrupted.append(signum)
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        app()
    except VlmprobeError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True, highlight=False)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, SystemExit) as e:  # click turns Ctrl-C into "Aborted!", exit 1
        if not interrupted and not isinstance(e, KeyboardInterrupt):
            raise
        console.print(RESUME_HINT, soft_wrap=True, highlight=False, markup=False)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGINT, previous)
