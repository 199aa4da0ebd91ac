"""Study files: a catalogue of malformed studies, each rejected with file, line, field and what is allowed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ptlab.cli import app
from ptlab.study.spec import StudyError, load_study, validate_study

STUDIES = sorted((Path(__file__).resolve().parent.parent / "studies").glob("*.yaml"))

GOOD = """\
name: tiny_grid
method: coop
backbone: world:tiny-rn
dataset: world:shapes
shots: 4
train: {epochs: 3, lr: 0.002}
noise_type: symmetric
factors:
  noise_rate: [0.0, 0.25]
  loss: [ce, gce]
seeds: [1, 2]
runner: inline
"""

SEARCH = """\
name: tiny_search
method: coop
backbone: world:tiny-rn
dataset: world:shapes
train: {epochs: 6}
seeds: [1]
search:
  space: {lr: {log_uniform: [1.0e-4, 1.0e-1]}}
  samples: 8
  metric: val_acc
  asha: {grace_period: 1, reduction_factor: 2}
"""

UPL = """\
name: tiny_upl
method: upl
backbone: world:tiny-rn
dataset: world:shapes
shots: 4
factors:
  loss: [ce, gce]
seeds: [1, 2]
ensemble: {upl: 2}
runner: inline
"""


def edit(base: str, old: str, new: str) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


# (case id, study text, the text on the offending line, field as reported, words the message must hold)
CATALOGUE = [
    ("unknown method", edit(GOOD, "method: coop", "method: coopp"), "method: coopp", "method",
     ["unknown method 'coopp'", "allowed:", "zeroshot"]),
    ("unknown factor", edit(GOOD, "  loss: [ce, gce]", "  colour: [red]"), "colour:", "factors.colour",
     ["not a trial config field", "allowed:"]),
    ("factor name typo", edit(GOOD, "  loss: [ce, gce]", "  noise_rat: [0.1]"), "noise_rat:", "factors.noise_rat",
     ["did you mean noise_rate"]),
    ("wrong type: shots", edit(GOOD, "shots: 4", "shots: many"), "shots: many", "shots", ["'many'", "valid integer"]),
    ("wrong type: factor value", edit(GOOD, "[0.0, 0.25]", "[0.0, low]"), "noise_rate:", "factors.noise_rate[1]",
     ["'low'", "valid number"]),
    ("wrong type: seeds", edit(GOOD, "seeds: [1, 2]", "seeds: one"), "seeds: one", "seeds", ["valid list"]),
    ("empty grid", edit(GOOD, "  loss: [ce, gce]", "  loss: []"), "loss: []", "factors.loss",
     ["empty list", "at least one value"]),
    ("noise rate at 1", edit(GOOD, "[0.0, 0.25]", "[0.0, 1.0]"), "noise_rate:", "factors.noise_rate[1]",
     ["1.0", "less than 1"]),
    ("negative noise rate", edit(GOOD, "noise_type: symmetric", "noise_type: symmetric\nnoise_rate: -0.1"),
     "noise_rate: -0.1", "noise_rate", ["-0.1", "greater than or equal to 0"]),
    ("gce q of 0", edit(GOOD, "shots: 4", "shots: 4\ngce_q: 0"), "gce_q: 0", "gce_q", ["greater than 0"]),
    ("gce q above 1", edit(GOOD, "  loss: [ce, gce]", "  gce_q: [0.5, 1.5]"), "gce_q:", "factors.gce_q[1]",
     ["1.5", "less than or equal to 1"]),
    ("unknown world backbone", edit(GOOD, "world:tiny-rn", "world:tiny-rnn"), "backbone:", "backbone",
     ["unknown world backbone", "allowed: world:tiny-vit, world:tiny-rn"]),
    ("unknown open_clip model", edit(GOOD, "world:tiny-rn", "ViT-Q-99:openai"), "backbone:", "backbone",
     ["unknown backbone 'ViT-Q-99:openai'"]),
    ("unknown pretrained tag", edit(GOOD, "world:tiny-rn", "RN50:imagenet-xl"), "backbone:", "backbone",
     ["no pretrained tag 'imagenet-xl'", "openai"]),
    ("backbone without a source", edit(GOOD, "world:tiny-rn", "tiny-rn"), "backbone:", "backbone",
     ["needs a source", "world:tiny-vit"]),
    ("text method on a backbone with another tokenizer", edit(GOOD, "world:tiny-rn", "ViT-B-16-SigLIP:webli"),
     "backbone:", "backbone", ["Hugging Face tokenizer", "coop encodes text", "CLIP's tokenizer", "zeroshot",
                               "reads images only (vpt, lpt)"]),
    ("text method on a timm backbone", edit(GOOD, "world:tiny-rn", "timm:vit_tiny_patch16_224"), "backbone:",
     "backbone", ["timm image encoder, with no text tower", "coop encodes text"]),
    ("local-dir backbone that is not there", edit(GOOD, "world:tiny-rn", "local-dir:/no/such/clip"), "backbone:",
     "backbone", ["expected open_clip_config.json in /no/such/clip"]),
    ("unknown dataset scheme", edit(GOOD, "world:shapes", "wrld:shapes"), "dataset:", "dataset",
     ["unknown scheme 'wrld'", "known:"]),
    ("unknown world task", edit(GOOD, "world:shapes", "world:circles"), "dataset:", "dataset",
     ["unknown world dataset 'circles'", "world:shapes"]),
    ("unknown backbone as a factor value",
     edit(edit(GOOD, "backbone: world:tiny-rn\n", ""), "  loss: [ce, gce]", "  backbone: [world:tiny-vit, world:big]"),
     "backbone: [", "factors.backbone[1]", ["unknown world backbone"]),
    ("negative epochs", edit(GOOD, "epochs: 3", "epochs: -5"), "train:", "train.epochs", ["-5", "greater than or equal to 0"]),
    ("unknown train field", edit(GOOD, "lr: 0.002", "lr: 0.002, lerning: 3"), "train:", "train.lerning",
     ["unknown field", "allowed: epochs"]),
    ("unknown top-level field", edit(GOOD, "shots: 4", "shots: 4\nlearning_rate: 0.1"), "learning_rate:",
     "learning_rate", ["unknown field", "allowed:"]),
    ("seed instead of seeds", edit(GOOD, "seeds: [1, 2]", "seed: 3"), "seed: 3", "seed", ["seeds: [1, 2, 3]"]),
    ("seed as a factor", edit(GOOD, "  loss: [ce, gce]", "  seed: [1, 2]"), "seed: [1, 2]", "factors.seed",
     ["list them under `seeds:`"]),
    ("duplicate seeds", edit(GOOD, "seeds: [1, 2]", "seeds: [1, 1]"), "seeds:", "seeds", ["listed twice"]),
    ("duplicate factor value", edit(GOOD, "[ce, gce]", "[ce, ce]"), "loss:", "factors.loss[1]", ["listed twice"]),
    ("invalid cell", edit(GOOD, "noise_type: symmetric\n", "").replace("  loss: [ce, gce]", "  noise_type: [none]"),
     "factors:", "factors", ["cells are not valid trials", "needs a noise_type"]),
    ("unknown runner", edit(GOOD, "runner: inline", "runner: local"), "runner:", "runner", ["'train' or 'inline'"]),
    ("fractional GPUs above one", edit(GOOD, "runner: inline", "runner: inline\nresources: {gpu: 1.5}"),
     "resources:", "resources.gpu", ["fraction of one GPU"]),
    ("workers with the inline runner", edit(GOOD, "runner: inline", "runner: inline\nresources: {workers: 2}"),
     "resources:", "resources.workers", ["need runner: train"]),
    ("bad study name", edit(GOOD, "name: tiny_grid", "name: tiny/grid"), "name:", "name", ["should match pattern"]),
    ("planned trials mismatch", GOOD + "planned_trials: 5\n", "planned_trials:", "planned_trials",
     ["says 5", "plans 8"]),
    ("missing dashboard", GOOD + "report: dashboards/nope.yaml\n", "report:", "report", ["no dashboard file"]),
    ("search metric not produced", edit(SEARCH, "metric: val_acc", "metric: accuracy"), "metric: accuracy",
     "search.metric", ["'accuracy' is not produced by method coop", "allowed:", "val_acc"]),
    ("search metric of another method", edit(SEARCH, "metric: val_acc", "metric: test_auroc"), "metric: test_auroc",
     "search.metric", ["not produced by method coop"]),
    ("unknown search field", edit(SEARCH, "{lr:", "{lrr:"), "space:", "search.space.lrr", ["not a trial config field"]),
    ("log scale from zero", edit(SEARCH, "[1.0e-4, 1.0e-1]", "[0, 1.0e-1]"), "space:", "search.space.lr",
     ["needs lo > 0"]),
    ("unknown distribution", edit(SEARCH, "log_uniform", "lognormal"), "space:", "search.space.lr.lognormal",
     ["unknown field", "allowed: uniform, log_uniform, int, log_int, choice"]),
    ("float search on an integer field", edit(SEARCH, "{lr: {log_uniform: [1.0e-4, 1.0e-1]}}", "{n_ctx: {uniform: [1, 16]}}"),
     "space:", "search.space.n_ctx", ["integer field", "int: [lo, hi]"]),
    ("search bounds outside the field", edit(SEARCH, "{lr: {log_uniform: [1.0e-4, 1.0e-1]}}", "{gce_q: {uniform: [0.5, 2.0]}}"),
     "space:", "search.space.gce_q.uniform", ["2.0", "less than or equal to 1"]),
    ("no samples", edit(SEARCH, "samples: 8", "samples: 0"), "samples: 0", "search.samples", ["greater than or equal to 1"]),
    ("search over several seeds", edit(SEARCH, "seeds: [1]", "seeds: [1, 2]"), "seeds:", "seeds", ["one seed"]),
    ("ASHA grace period at the last epoch", edit(SEARCH, "grace_period: 1", "grace_period: 6"), "asha:",
     "search.asha.grace_period", ["below train.epochs (6)"]),
    ("search mode", edit(SEARCH, "metric: val_acc", "metric: val_acc\n  mode: maximise"), "mode:", "search.mode",
     ["'max' or 'min'"]),
    ("ensemble of a method without test logits", edit(GOOD, "seeds: [1, 2]", "seeds: [1, 2]\nensemble: {coop: 2}"),
     "ensemble:", "ensemble.coop", ["saves no test logits", "allowed: upl, robust_upl"]),
    ("ensemble of a method the study does not run", edit(UPL, "{upl: 2}", "{upl: 2, robust_upl: 2}"), "ensemble:",
     "ensemble.robust_upl", ["runs no robust_upl trials", "add it to factors.method"]),
    ("ensemble of more seeds than listed", edit(UPL, "{upl: 2}", "{upl: [2, 16]}"), "ensemble:", "ensemble.upl",
     ["ensemble of 16", "lists 2", "add seeds or lower the size"]),
    ("ensemble of no seeds", edit(UPL, "{upl: 2}", "{upl: 0}"), "ensemble:", "ensemble.upl[0]", ["greater than 0"]),
    ("ensemble in a search study", SEARCH + "ensemble: {coop: 1}\n", "ensemble:", "ensemble",
     ["search study", "remove `ensemble`"]),
    # hostile YAML, refused before anything is built from it
    ("duplicated key", GOOD + "shots: 8\n", "shots: 8", "shots", ["written twice", "keep only the last", "remove one"]),
    ("duplicated nested key", edit(GOOD, "lr: 0.002}", "lr: 0.002, epochs: 5}"), "train:", "train.epochs",
     ["written twice"]),
    ("YAML alias bomb", GOOD + "method_options:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n"
     + "".join(f"  {n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcd", "bcde", strict=True)),
     "  e: &e", "method_options.e", ["more than 20000 values through YAML aliases", "write the values out"]),
    ("self-referencing alias", GOOD + "method_options: &m {loop: *m}\n", "method_options:", "method_options.loop",
     ["refers to the node it is part of"]),
    ("grid of a million trials", edit(GOOD, "  loss: [ce, gce]", "".join(
        f"  {f}: [{', '.join(str(v) for v in range(1, 11))}]\n" for f in ("n_ctx", "sce_alpha", "sce_beta", "nce_alpha",
                                                                          "nce_beta", "batch_size"))),
     "factors:", "factors", ["plans 4000000 trials", "above the limit of 10000", "PTLAB_MAX_TRIALS"]),
    # meaningless settings pydantic alone would take
    ("field fixed and a factor", edit(GOOD, "shots: 4", "shots: 4\nloss: gce"), "  loss: [ce, gce]", "factors.loss",
     ["also set to 'gce'", "either fixed or a factor"]),
    ("nested field fixed and a factor", edit(GOOD, "  loss: [ce, gce]", "  lr: [0.01, 0.02]"), "  lr: [", "factors.lr",
     ["train.lr is also set to 0.002"]),
    ("negative seed", edit(GOOD, "seeds: [1, 2]", "seeds: [1, -2]"), "seeds:", "seeds[1]", ["-2", "non-negative"]),
    ("shots: true", edit(GOOD, "shots: 4", "shots: true"), "shots: true", "shots", ["True", "not true/false"]),
    ("epochs: yes", edit(GOOD, "epochs: 3", "epochs: yes"), "train:", "train.epochs", ["not true/false"]),
    ("boolean factor value", edit(GOOD, "  loss: [ce, gce]", "  shots: [true, 2]"), "  shots: [", "factors.shots[0]",
     ["not true/false"]),
    ("shots beyond every class", edit(GOOD, "shots: 4", "shots: 500"), "shots: 500", "shots",
     ["at most 64 training images in a class", "use shots <= 64"]),
    ("shots factor beyond every class", edit(GOOD, "  loss: [ce, gce]", "  shots: [4, 100]"), "  shots: [",
     "factors.shots[1]", ["at most 64"]),
    ("no context vectors", edit(GOOD, "shots: 4", "shots: 4\nn_ctx: 0"), "n_ctx: 0", "n_ctx", ["learns nothing", "n_ctx >= 1"]),
    ("context beyond the text tower", edit(GOOD, "shots: 4", "shots: 4\nn_ctx: 1000"), "n_ctx: 1000", "n_ctx",
     ["holds 32 tokens", "at most 28 context vectors"]),
    ("context factor beyond the text tower", edit(GOOD, "  loss: [ce, gce]", "  n_ctx: [4, 40]"), "  n_ctx:",
     "factors.n_ctx", ["40", "at most 28"]),
    ("missing dataset folder", edit(GOOD, "world:shapes", "folder:/nonexistent"), "dataset:", "dataset",
     ["no folder /nonexistent", "one sub-folder of images per class"]),
    ("missing dataset folder as a factor value",
     edit(edit(GOOD, "dataset: world:shapes\n", ""), "  loss: [ce, gce]", "  dataset: [world:shapes, folder:./no-such-data]"),
     "  dataset: [", "factors.dataset[1]", ["no folder", "no-such-data"]),
    ("unknown device", edit(GOOD, "shots: 4", "shots: 4\ndevice: gpu"), "device: gpu", "device",
     ["'gpu': unknown device", "cuda:N"]),
    ("unknown device as a factor value", edit(GOOD, "  loss: [ce, gce]", "  device: [cpu, tpu]"), "  device:",
     "factors.device[1]", ["'tpu': unknown device"]),
    ("template without the class name", edit(GOOD, "shots: 4", "shots: 4\ntemplate: a photo of a thing."), "template:",
     "template", ["slot {}", "'a photo of a {}.'"]),
    # settings no trial of the study reads, refused rather than hashed into trials that compute the same thing
    ("option no method takes", edit(GOOD, "shots: 4", "shots: 4\nmethod_options: {lamda: 1.0}"), "method_options:",
     "method_options", ["option lamda", "method coop takes: grad_ratio", "learn_context"]),
    ("parameter of a loss the study never uses", edit(GOOD, "shots: 4", "shots: 4\nsce_alpha: 0.5"), "sce_alpha:",
     "sce_alpha", ["parameter of loss sce", "losses: ce, gce", "remove it or set loss"]),
    ("field the method never reads", edit(edit(GOOD, "method: coop", "method: linear_probe"), "shots: 4",
                                          "shots: 4\nn_ctx: 8"), "n_ctx: 8", "n_ctx",
     ["method linear_probe does not read n_ctx", "remove it"]),
    ("searched field the method never reads", edit(edit(SEARCH, "method: coop", "method: zeroshot"),
                                                   "{lr: {log_uniform: [1.0e-4, 1.0e-1]}}", "{n_ctx: {int: [2, 8]}}"),
     "space:", "search.space.n_ctx", ["does not read n_ctx"]),
    ("base-to-new with a method bound to its classes", edit(edit(GOOD, "method: coop", "method: linear_probe"),
                                                           "shots: 4", "shots: 4\ndata: {base_to_new: true}"),
     "data:", "data.base_to_new", ["method linear_probe cannot classify classes it was not trained on", "cocoop, coop"]),
    ("base-to-new with class-specific context", edit(GOOD, "shots: 4", "shots: 4\ncsc: true\ndata: {base_to_new: true}"),
     "data:", "data.base_to_new", ["csc: true learns something per training class", "set csc: false"]),
    ("template with two class names", edit(GOOD, "shots: 4", "shots: 4\ntemplate: '{} and {}'"), "template:",
     "template", ["exactly once"]),
]


@pytest.mark.parametrize(("text", "needle", "field", "words"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_malformed_study_names_file_line_field_and_fix(tmp_path, text, needle, field, words):
    path = tmp_path / "bad_study.yaml"
    path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if needle in row)
    with pytest.raises(StudyError) as caught:
        load_study(path)
    message = str(caught.value)
    expected = f"{path}:{line}: field {field}:"
    hits = [row for row in message.splitlines() if row.startswith(expected)]
    assert hits, f"no line starting {expected!r} in:\n{message}"
    for word in words:
        assert any(word in hit for hit in hits), f"{word!r} missing from {hits}"


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 40


def test_every_problem_is_reported_at_once(tmp_path):
    text = edit(edit(edit(GOOD, "method: coop", "method: coopp"), "shots: 4", "shots: many"), "runner: inline", "runner: x")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(StudyError) as caught:
        load_study(path)
    assert "3 problems" in str(caught.value).splitlines()[0]


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD.replace("seeds: [1, 2]", "seeds: [1, 2"))
    with pytest.raises(StudyError, match=rf"{path}:\d+: not valid YAML"):
        load_study(path)


def test_a_study_is_a_mapping(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("- coop\n- zeroshot\n")
    with pytest.raises(StudyError, match="a study is a mapping"):
        load_study(path)


def test_missing_file():
    with pytest.raises(StudyError, match="no such study file"):
        load_study("/nonexistent/study.yaml")


def test_grid_plan():
    spec = validate_study(yaml.safe_load(GOOD))
    trials = spec.trials()
    assert spec.kind.name == "grid" and spec.n_planned() == len(trials) == 8 and spec.n_cells() == 4
    assert len({t.trial_id for t in trials}) == 8
    by_cell: dict[str, set[int]] = {}
    for t in trials:
        by_cell.setdefault(t.cell_id, set()).add(t.config.seed)
    assert len(by_cell) == 4 and all(seeds == {1, 2} for seeds in by_cell.values())
    assert {(t.config.noise_rate, t.config.loss) for t in trials} == {(r, q) for r in (0.0, 0.25) for q in ("ce", "gce")}
    assert all(t.config.noise_type == "symmetric" and t.config.train.epochs == 3 for t in trials)


def test_shorthand_names_resolve_to_config_paths():
    spec = validate_study(yaml.safe_load(SEARCH))
    assert list(spec.search.space) == ["train.lr"]
    assert spec.base.train.epochs == 6 and spec.n_planned() == 8


def test_spec_as_run_round_trips_with_its_hash():
    spec = validate_study(yaml.safe_load(GOOD))
    stored = yaml.safe_load(spec.to_yaml())
    assert stored["planned_trials"] == 8 and stored["spec_hash"] == spec.content_hash()
    again = validate_study(stored)
    assert again.content_hash() == spec.content_hash()
    assert [t.trial_id for t in again.trials()] == [t.trial_id for t in spec.trials()]
    for key in ("name", "method", "factors", "seeds", "report", "planned_trials"):
        assert key in stored


def test_ensemble_sizes_are_stored_with_the_spec_but_not_hashed():
    one = validate_study(yaml.safe_load(UPL))
    several = validate_study(yaml.safe_load(edit(UPL, "{upl: 2}", "{upl: [1, 2]}")))
    assert one.ensemble == {"upl": [2]} and several.ensemble == {"upl": [1, 2]}
    assert validate_study(yaml.safe_load(several.to_yaml())).ensemble == {"upl": [1, 2]}
    # ensembles are computed from stored trials: changing them changes no trial
    assert one.content_hash() == several.content_hash()


def test_an_edited_stored_spec_is_caught():
    stored = yaml.safe_load(validate_study(yaml.safe_load(GOOD)).to_yaml())
    stored["factors"]["loss"] = ["ce"]
    stored.pop("planned_trials")
    with pytest.raises(StudyError, match="field spec_hash: the study's trials changed"):
        validate_study(stored)


def test_report_path_resolves_next_to_the_study(tmp_path):
    (tmp_path / "dashboards").mkdir()
    (tmp_path / "dashboards" / "mine.yaml").write_text("title: x\n")
    (tmp_path / "studies").mkdir()
    path = tmp_path / "studies" / "s.yaml"
    path.write_text(GOOD + "report: dashboards/mine.yaml\n")
    assert load_study(path).report == str((tmp_path / "dashboards" / "mine.yaml").resolve())


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_studies_validate(path):
    # their datasets need not be on this machine (real-data studies): the file itself is judged
    spec = load_study(path, check_data=False)
    assert spec.n_planned() >= 1


def test_default_study_shape():
    spec = load_study(Path(__file__).resolve().parent.parent / "studies" / "noise_grid.yaml")
    assert spec.method == "coop" and spec.base.dataset.startswith("world:")
    assert set(spec.factors["noise_type"]) == {"symmetric", "confusion"}
    assert spec.factors["noise_rate"] == [0.125, 0.25, 0.5]
    assert set(spec.factors["loss"]) == {"ce", "gce"} and len(spec.seeds) >= 3


def test_cli_validate(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(edit(GOOD, "method: coop", "method: coopp"))
    runner = CliRunner()
    ok = runner.invoke(app, ["study", "validate", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "4 cells x 2 seeds" in ok.output and "planned trials: 8" in ok.output
    failed = runner.invoke(app, ["study", "validate", str(bad)])
    assert failed.exit_code == 2
    assert f"{bad}:2: field method: 'coopp': unknown method 'coopp'; did you mean 'coop'?" in failed.output


def test_cli_dry_run_runs_nothing(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(textwrap.dedent(GOOD))
    result = CliRunner().invoke(app, ["study", "run", str(study), "--dry-run", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run").exists()


def test_hostile_yaml_is_refused_before_it_is_expanded(tmp_path):
    # 10 levels of 10 aliases: 10^10 values if anything walked them
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    path = tmp_path / "bomb.yaml"
    path.write_text(GOOD + "method_options:\n" + textwrap.indent(bomb, "  "))
    with pytest.raises(StudyError, match="through YAML aliases"):
        load_study(path)


def test_the_grid_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    monkeypatch.setenv("PTLAB_MAX_TRIALS", "7")
    with pytest.raises(StudyError, match="plans 8 trials .* above the limit of 7; .* PTLAB_MAX_TRIALS=8"):
        load_study(path)
    monkeypatch.setenv("PTLAB_MAX_TRIALS", "8")
    assert load_study(path).n_planned() == 8


def test_a_stored_spec_names_each_factor_once():
    spec = validate_study(yaml.safe_load(GOOD))
    stored = yaml.safe_load(spec.to_yaml())
    assert "loss" not in stored and "noise_rate" not in stored and stored["factors"]["loss"] == ["ce", "gce"]
    assert validate_study(stored).content_hash() == spec.content_hash()


def test_cells_that_compute_the_same_thing_are_one_cell_and_its_trials_run_once():
    """noise_grid_fixed: both noise types at noise_rate 0 are the clean trial, run once and counted for both."""
    path = Path(__file__).resolve().parent.parent / "studies" / "noise_grid_fixed.yaml"
    spec = load_study(path)
    groups = spec.cell_groups()
    assert sum(map(len, groups)) == 16 and len(groups) == spec.n_cells() == 14
    merged = [group for group in groups if len(group) > 1]
    assert merged == [[{"noise_type": "symmetric", "noise_rate": 0.0, "loss": loss},
                       {"noise_type": "confusion", "noise_rate": 0.0, "loss": loss}] for loss in ("ce", "gce")]
    trials = spec.trials()
    assert spec.n_planned() == len(trials) == 42 == len({t.trial_id for t in trials})
    clean = [t for t in trials if t.config.noise_rate == 0]
    assert len(clean) == 6 and all(t.repeats == ({**t.cell, "noise_type": "confusion"},) for t in clean)
    assert all(t.config.noise_type == "symmetric" for t in clean)  # the first cell's config, as written, runs
    # the clean trials keep the ids of noise_type none; the noisy ones theirs
    none = spec.base.with_updates({"noise_type": "none", "noise_rate": 0.0, "loss": "ce", "seed": 1})
    assert none.trial_id in {t.trial_id for t in clean}
    stored = yaml.safe_load(spec.to_yaml())
    assert stored["planned_trials"] == 42 and validate_study(stored).n_planned() == 42
    out = CliRunner().invoke(app, ["study", "validate", str(path)])
    assert out.exit_code == 0, out.output
    assert ("16 cells x 3 seeds ([1, 2, 3]); 14 distinct: 2 cells compute what another does (they differ from it "
            "only in noise_type) and share its trials") in out.output
    assert "noise_type=symmetric, noise_rate=0.0, loss=ce  (also noise_type=confusion)" in out.output
    assert "planned trials: 42 distinct (48 as the grid is written, 6 of them repeats)" in out.output


def test_a_method_that_reads_no_noise_is_one_cell_at_every_noise_rate():
    spec = validate_study(yaml.safe_load(edit(GOOD, "  loss: [ce, gce]", "  method: [coop, ctx0]")))
    # grid order: (0, coop), (0, ctx0), (0.25, coop), (0.25, ctx0); ctx0 at 0.25 repeats ctx0 at 0
    assert [len(group) for group in spec.cell_groups()] == [1, 2, 1]
    assert spec.n_planned() == 3 * 2


def test_a_loss_written_as_a_choice_is_the_study_written_flat(tmp_path):
    flat = {"name": "l", "method": "coop", "dataset": "world:shapes", "backbone": "world:tiny-rn",
            "noise_type": "symmetric", "factors": {"noise_rate": [0.25, 0.5]}}
    choice = validate_study({**flat, "loss": {"name": "gce", "q": 0.5}})
    assert choice.content_hash() == validate_study({**flat, "loss": "gce", "gce_q": 0.5}).content_hash()
    assert [t.config.trial_id for t in choice.trials()] == [
        t.config.trial_id for t in validate_study({**flat, "loss": "gce", "gce_q": 0.5}).trials()]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**flat, "loss": {"name": "gce", "q": 1.5}}, sort_keys=False))
    with pytest.raises(StudyError, match=r"s.yaml:\d+: field loss: loss.q: Input should be less than or equal to 1"):
        load_study(tmp_path / "s.yaml")
