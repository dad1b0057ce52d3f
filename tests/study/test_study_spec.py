"""The study file: the template, bad input refused with the line and the fix before any job starts,
stage options checked and typed by the stages' own configs and API signatures, and the jobs laid
out per model x dataset."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmprobe.cli import app
from vlmprobe.probe import ProbeConfig
from vlmprobe.report import ReportConfig
from vlmprobe.rise import ImageChoice
from vlmprobe.study import load_study, run_study, write_template
from vlmprobe.study.jobs import plan
from vlmprobe.study.spec import TEMPLATE, _hints
from vlmprobe.study.stages import STAGES, report_stage
from vlmprobe.validation import VlmprobeError

BASE = """\
out: out
models: [efficientnet_lite0, efficientnet_lite0_random]
datasets:
  breastus_phantom: {root: data/breastus}
  brainmr: {root: data/brainmr}
stages:
  probe: {label: [class, word]}
  rise: {n_masks: 64, labels: [class]}
"""


def write(tmp_path: Path, text: str, roots=("breastus", "brainmr")) -> Path:
    for r in roots:
        (tmp_path / "data" / r).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / r / "x.png").write_bytes(b"")
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_init_writes_the_template_once_and_it_loads_with_its_roots(tmp_path):
    path = tmp_path / "study.yaml"
    result = CliRunner().invoke(app, ["study", str(path), "--init"])
    assert result.exit_code == 0 and path.read_text() == TEMPLATE.read_text()
    with pytest.raises(VlmprobeError, match="exists; --init writes a new file only"):
        write_template(path)
    with pytest.raises(VlmprobeError, match=r"study.yaml:\d+: datasets.breastus.root: Dataset "
                                            "root for 'breastus' .* does not exist"):
        load_study(path)
    spec = load_study(write(tmp_path, path.read_text()))
    assert spec.models == ["efficientnet_lite0", "efficientnet_lite0_random"]
    assert spec.stages == ["extract", "probe", "umap", "rise"]
    assert spec.report.config == ReportConfig()  # the template asks for the study's report
    assert spec.out == tmp_path / "study_out" and spec.launcher.name == "local"
    assert [d.root for d in spec.datasets] == [tmp_path / "data/breastus",
                                               tmp_path / "data/brainmr"]


@pytest.mark.parametrize("change, line, message", [
    (("models:", "modles:"), 2, r"Unknown study key 'modles'\. Did you mean 'models'\?"),
    (("efficientnet_lite0,", "efficientnet_lite,"), 2,
     r"models\.0: Unknown model 'efficientnet_lite'\. Did you mean 'efficientnet_lite0'"),
    (("efficientnet_lite0_random]", "efficientnet_lite0]"), 2,
     r"model 'efficientnet_lite0' is listed twice \(first on line 2\); keep one"),
    (("brainmr: {", "brainmri: {"), 5, r"Unknown dataset 'brainmri'\. Did you mean 'brainmr'\?"),
    (("  rise:", "  umpa: {}\n  rise:"), 8, r"Unknown stage 'umpa'\. Did you mean 'umap'\?"),
    (("data/brainmr}", "data/brainmr}\n  brainmr: {root: data/breastus}"), 6,
     r"datasets\.brainmr is given twice \(first on line 5\); keep one"),
    (("data/brainmr}", "data/nowhere}"), 5, r"brainmr\.root: Dataset root for 'brainmr' "
                                            r".*nowhere does not exist"),
    (("n_masks: 64", "n_masks: many"), 8,
     r"stages\.rise\.n_masks: expected an integer, got 'many' \(str\)"),
    (("label: [class, word]", "label: [class, 3]"), 7,
     r"stages\.probe\.label\.1: expected a string or null, got 3"),
    (("label: [class, word]", "sovler: sklearn"), 7,
     r"ProbeConfig has no setting 'sovler'\. Did you mean 'solver'\?.* Besides its settings, "
     r"probe takes: compare_paper, label, tap"),
    (("  rise: {", "  extract: {shard: 0/2}\n  rise: {"), 8,
     r"stages\.extract\.shard: 'shard' is set by the study itself"),
    (("  probe: {label: [class, word]}\n", ""), 7,
     r"rise explains the probes the probe stage saves; add 'probe:'"),
    (("labels: [class]", "labels: [class, site]"), 4,
     r"rise explains label\(s\) \['site'\], but the probe stage fits only \['class', 'word'\]"),
    (("n_masks: 64", "n_masks: 1"), 8, r"n_masks"),
    (("choice", "choice"), None, None),  # the file unchanged loads
    (("{root: data/brainmr}", "{root: data/brainmr, options: {sise: 64}}"), 5,
     r"Unknown dataset option 'sise'\. Did you mean 'size'"),
    (("{root: data/brainmr}", "{root: data/brainmr, stages: {umap: {}}}"), 5,
     r"the study runs no 'umap' stage"),
    (("  rise:", "  report: {bandwith: 0.3}\n  rise:"), 8,
     r"ReportConfig has no setting 'bandwith'\. Did you mean 'bandwidth'"),
    (("  rise:", "  report: {rbf_images: lots}\n  rise:"), 8,
     r"stages\.report\.rbf_images: expected an integer, got 'lots'"),
])
def test_bad_input_names_the_line_and_the_fix(tmp_path, change, line, message):
    path = write(tmp_path, BASE.replace(*change))
    if message is None:
        assert len(load_study(path).datasets) == 2
        return
    with pytest.raises(VlmprobeError) as e:
        load_study(path)
    assert str(e.value).startswith(f"{path}:{line}: "), str(e.value)
    assert re.search(message, str(e.value)), str(e.value)


def test_errors_reach_the_command_line_before_any_job(tmp_path):
    path = write(tmp_path, BASE.replace("n_masks: 64", "n_masks: many"))
    result = CliRunner().invoke(app, ["study", str(path)])
    assert result.exit_code != 0 and not (tmp_path / "out").exists()


def test_options_are_typed_layered_and_resolved_per_job(tmp_path):
    path = write(tmp_path, """\
        out: /abs/out
        models:
          efficientnet_lite0: {batch_size: 8}
          efficientnet_lite0_random:
        datasets:
          breastus_phantom:
            root: data/breastus
            stages: {probe: {t_grid: [1, 10], label: word}, extract: {batch_size: 4}}
          brainmr:
            root: data/brainmr
            options: {size: 64}
            stages: {rise: false}
          brain_again:
            dataset: brainmr
            root: data/brainmr
            options: {class_subset: [glioma_tumor, no_tumor]}
        stages:
          extract: {batch_size: auto, num_workers: 0}
          probe: {n_bootstrap: 100, label: [class, word]}
          umap: {n_neighbors: [15], min_dist: [0], color_by: [word]}
          rise: {choice: {k: 2}, labels: [word], text_boxes: boxes.csv, include_baselines: true}
        launcher: {name: local, jobs: 2}
        """)
    spec = load_study(path)
    bus, brain, again = spec.datasets
    assert spec.out == Path("/abs/out") and spec.launcher.jobs == 2
    assert (brain.options, again.dataset, again.options["class_subset"]) == (
        {"size": 64}, "brainmr", ["glioma_tumor", "no_tumor"])
    # the model's extract options win over the dataset's, which win over the study's
    assert spec.settings("extract", bus, "efficientnet_lite0").config.batch_size == 8
    assert spec.settings("extract", bus, "efficientnet_lite0_random").config.batch_size == 4
    assert spec.settings("extract", brain, "efficientnet_lite0_random").config.batch_size == "auto"
    probe = spec.settings("probe", bus)
    assert probe.config == ProbeConfig(t_grid=(1.0, 10.0), n_bootstrap=100)  # a tuple, as a config
    assert probe.keywords == {"label": "word"}
    umap = spec.settings("umap", brain)
    assert (umap.config.n_neighbors, umap.config.min_dist) == ((15,), (0.0,))
    rise = spec.settings("rise", bus, "efficientnet_lite0")
    assert rise.keywords["choice"] == ImageChoice(k=2)
    assert rise.keywords["text_boxes"] == tmp_path / "boxes.csv"  # relative to the study file
    assert rise.call_keywords(STAGES["rise"].calls[0])["labels"] == ["word"]
    ids = [j.id for j in plan(spec)]
    assert ids[:5] == ["extract/efficientnet_lite0/breastus_phantom",
                       "extract/efficientnet_lite0_random/breastus_phantom",
                       "probe/breastus_phantom", "umap/breastus_phantom",
                       "rise/efficientnet_lite0/breastus_phantom"]
    assert "rise/efficientnet_lite0_random/breastus_phantom" in ids  # include_baselines
    assert not [i for i in ids if i.startswith("rise/") and i.endswith("/brainmr")]  # rise: false
    assert len(ids) == 6 + 4 + 6


def test_null_baselines_get_no_rise_job_unless_asked(tmp_path):
    ids = [j.id for j in plan(load_study(write(tmp_path, BASE)))]
    assert [i for i in ids if i.startswith("rise/")] == [
        "rise/efficientnet_lite0/breastus_phantom", "rise/efficientnet_lite0/brainmr"]


def test_every_stage_option_is_typed_by_a_resolvable_annotation():
    """Stage options are checked by the configs' and API calls' annotations: each must resolve,
    or its options would go unchecked until a job runs."""
    for stage in (*STAGES.values(), report_stage()):
        for obj in (stage.config, *stage.calls):
            assert _hints(obj), f"{stage.name}: annotations of {obj} do not resolve"


def test_cluster_resources_are_checked_by_submitit_before_any_job(tmp_path):
    path = write(tmp_path, BASE + "launcher:\n  name: slurm\n  cluster: local\n  resources:\n"
                                  "    extract: {gpus: 1}\n")
    with pytest.raises(VlmprobeError, match=r"study\.yaml:13: launcher\.resources\.extract: "
                                            r"submitit refuses the extract resources "
                                            r"\{'gpus': 1\}: .*gpus"):
        run_study(path, progress=False)
    assert not (tmp_path / "out" / "run_record.json").exists()


def test_the_readme_study_example_is_a_valid_study(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("## Studies")[1].split("```yaml\n")[1].split("```")[0]
    for root in ("busi", "hicervix", "isic2019", "ct"):
        (tmp_path / root).mkdir()
        (tmp_path / root / "x.png").write_bytes(b"")
    path = tmp_path / "study.yaml"
    path.write_text(example.replace("/data/", f"{tmp_path}/"))
    spec = load_study(path)
    assert [d.name for d in spec.datasets] == ["breastus", "hicervix", "isic2019", "ctdicom_minmax"]
    ids = [j.id for j in plan(spec)]
    assert "rise/biomedclip/breastus" in ids and "rise/biomedclip/hicervix" not in ids
    assert spec.settings("extract", spec.datasets[0], "biomedclip").config.precision == "fp16"


def test_own_datasets_and_user_dataset_files_are_study_datasets(tmp_path, monkeypatch):
    """imagefolder:DIR (its folder is the root) and a $VLMPROBE_DATASETS entry (its own root)."""
    folder = tmp_path / "mine"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        (folder / label / "1.png").write_bytes(b"")
    user = tmp_path / "datasets.yaml"
    user.write_text(f"datasets:\n  cohort:\n    paper_name: Cohort\n    modality: US\n"
                    f"    classes: [a, b]\n    layout: imagefolder\n    layout_help: a/ b/\n"
                    f"    root: {folder}\n")
    monkeypatch.setenv("VLMPROBE_DATASETS", str(user))
    path = write(tmp_path, f"""\
        out: out
        models: [efficientnet_lite0]
        datasets:
          mine: {{dataset: "imagefolder:{folder}"}}
          cohort:
        stages: {{probe: {{}}}}
        """, roots=())
    spec = load_study(path)
    assert [(d.name, d.dataset, d.root) for d in spec.datasets] == [
        ("mine", f"imagefolder:{folder}", folder), ("cohort", "cohort", folder)]
    with pytest.raises(VlmprobeError, match=r"datasets.mine.* is not a folder"):
        load_study(write(tmp_path, path.read_text().replace(str(folder), str(tmp_path / "no")),
                         roots=()))
