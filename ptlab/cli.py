"""The `ptlab` command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import typer.core

from ptlab.report.cli import report as report_command
from ptlab.study.cli import app as study_app

# Typer's help writes a value type after every option, `--open <bool>` and `--help <bool>` too; a flag takes
# no value, so it shows none.
_option_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _option_type(self, ctx)

app = typer.Typer(no_args_is_help=True, help="Robustness and hyperparameter studies of prompt tuning on CLIP models.")
trial_app = typer.Typer(no_args_is_help=True, help="Run one trial without Ray (the debugging path).")
world_app = typer.Typer(no_args_is_help=True, help="The embedded image world and its tiny pretrained CLIPs.")
app.add_typer(trial_app, name="trial")
data_app = typer.Typer(no_args_is_help=True, help="Dataset sources: list them, check a local dataset.")
app.add_typer(world_app, name="world")
app.add_typer(data_app, name="data")
app.add_typer(study_app, name="study")
app.command("report")(report_command)


def _version(show: bool) -> None:
    if show:
        from ptlab import __version__

        typer.echo(f"ptlab {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print ptlab's version and exit.")):
    """Robustness and hyperparameter studies of prompt tuning on CLIP models."""


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@trial_app.command("run")
def trial_run(
    config: Path = typer.Option(..., "--config", "-c", help="Trial config YAML (fields of ptlab.config.TrialConfig)."),
    cache_dir: Path = typer.Option(None, help="Feature cache folder (default $PTLAB_CACHE or ~/.cache/ptlab)."),
    output: Path = typer.Option(None, "--output", "-o", help="Also write the trial record as JSON here."),
    quiet: bool = typer.Option(False, help="Print only the final metrics."),
):
    """Run one trial of any method and print its metrics."""
    from dataclasses import asdict

    from ptlab.config import ConfigError, load_trial_config
    from ptlab.data.sources import DataError
    from ptlab.methods import run_trial
    from ptlab.methods.base import TrialContext
    from ptlab.models.backbone import BackboneError
    from ptlab.resources import size_torch_threads
    from ptlab.yamlfile import read_mapping

    try:
        data, _ = read_mapping(config, "trial config", "a mapping of fields (method, backbone, dataset, ...)", ConfigError)
        _check_names(data, config)
        cfg = load_trial_config(config)
    except ConfigError as err:
        _fail(str(err))

    def report(epoch: int, metrics: dict) -> None:
        if not quiet:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch")
            typer.echo(f"epoch {epoch:3d}  {shown}")

    ctx = TrialContext.for_config(cfg, report=report, log=lambda m: None if quiet else typer.echo(m))
    if cache_dir:
        ctx.cache_dir = cache_dir
    size_torch_threads()
    try:
        record = run_trial(cfg, ctx)
    except (BackboneError, DataError) as err:  # files the config names that are missing or damaged
        _fail(f"{config}: {err}")
    typer.echo(f"trial {record.trial_id}  method {cfg.method}  status {record.status}")
    for key, value in record.metrics.items():
        typer.echo(f"  {key:>18}: {value:.4f}" if isinstance(value, float) else f"  {key:>18}: {value}")
    if output:
        output.write_text(json.dumps(asdict(record), indent=2, default=str))


def _check_names(data: dict, config: Path) -> None:
    """Method, backbone and dataset names a trial config may misspell, refused before anything loads."""
    from ptlab.config import ConfigError, TrialConfig
    from ptlab.methods.registry import UnknownMethod, method_of
    from ptlab.models.backbone import backbone_problem
    from ptlab.study.guards import backbone_method_problem
    from ptlab.study.spec import dataset_problem

    names = {field: data.get(field, TrialConfig.model_fields[field].default) for field in ("method", "backbone", "dataset")}
    problems = []
    try:
        method_of(str(names["method"]))
    except UnknownMethod as err:
        problems.append(f"field method: {err}")
    for field, check in (("backbone", backbone_problem), ("dataset", dataset_problem)):
        problem = check(names[field]) if isinstance(names[field], str) else None
        if problem:
            problems.append(f"field {field}: {problem}")
    if not problems and isinstance(names["backbone"], str):
        problem = backbone_method_problem(str(names["method"]), names["backbone"])
        if problem:
            problems.append(f"field backbone: {problem}")
    if problems:
        raise ConfigError("\n".join([f"{config}: invalid trial config", *(f"  {p}" for p in problems)]))


@world_app.command("pretrain")
def world_pretrain(
    backbone: str = typer.Option("tiny-rn", help="tiny-rn or tiny-vit."),
    steps: int = typer.Option(None, help="Optimisation steps on captions (default: the recipe's)."),
    out: Path = typer.Option(None, help="Folder for the weights (default: overwrite the shipped ones)."),
    threads: int = typer.Option(None, help="Torch threads; results are reproducible for a fixed count."),
    skip_card: bool = typer.Option(False, help="Do not measure zero-shot accuracies for the model card."),
    recipe: str = typer.Option("shipped", help="shipped: the recipe of the shipped weights (LiT: a caption-free "
                                               "image tower, locked, then the text tower); joint: the first "
                                               "edition's, both towers together on captions."),
    checkpoint_dir: Path = typer.Option(None, help="Save the training state here as it goes; a rerun resumes "
                                                   "from it bit-identically (a finished image tower is reused)."),
):
    """Pretrain a tiny CLIP on world captions, save it in open_clip's local-dir layout, write its model card."""
    from dataclasses import replace

    from ptlab.world.pretrain import JOINT_RECIPES, MODEL_CFGS, SHIPPED_RECIPES, pretrain, save

    if backbone not in MODEL_CFGS:
        _fail(f"--backbone {backbone!r}: expected one of {', '.join(MODEL_CFGS)}")
    recipes = {"shipped": SHIPPED_RECIPES, "joint": JOINT_RECIPES}
    if recipe not in recipes:
        _fail(f"--recipe {recipe!r}: expected one of {', '.join(recipes)}")
    cfg = recipes[recipe][backbone]
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    if threads is not None:
        cfg = replace(cfg, threads=threads)
    model, record = pretrain(cfg, log=typer.echo, checkpoint_dir=checkpoint_dir)
    folder = save(model, backbone, record, out)
    typer.echo(f"saved {folder}")
    if not skip_card:
        _measure_card(backbone, record, out)


def _measure_card(backbone: str, record: dict, folder: Path | None, cache_dir: Path | None = None) -> None:
    import tempfile

    from ptlab.card import (
        HEADROOM,
        figure3_cases,
        graded_cases,
        headroom_cases,
        measure,
        noise_effect_holds,
        trials_store,
        write_card,
    )
    from ptlab.models.backbone import WORLD_ASSETS

    source = f"local-dir:{folder}" if folder else f"world:{backbone}"
    if cache_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            measured = measure(source, Path(tmp))
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        measured = measure(source, cache_dir, trials_store(cache_dir, folder or WORLD_ASSETS / backbone))
    path = write_card(backbone, record, measured, folder)
    typer.echo(f"model card {path}: {json.dumps(measured['zero_shot_test_acc'])}")
    for key, row in measured["prompt_tuning"].items():
        typer.echo(f"  {key}: zero-shot {row['zero_shot']:.1f}, 16-shot CoOp {row['coop_mean']:.1f} ({row['gain']:+.1f})")
    for key, row in measured.get("few_shot_seed_1", {}).items():
        typer.echo(f"  {key} (seed 1): linear probe {json.dumps(row['linear_probe'])}, CoOp {json.dumps(row['coop'])}")
    bar = f"zero-shot <= {HEADROOM['max_zero_shot']:g}, gain >= {HEADROOM['min_gain']:g}"
    typer.echo(f"  headroom ({bar}): {', '.join(headroom_cases(measured)) or 'none'}")
    typer.echo(f"  CoOp Figure 3 shape: {', '.join(figure3_cases(measured)) or 'none'}")
    typer.echo(f"  graded like real benchmarks: {json.dumps(graded_cases(measured))}")
    if "noise" in measured:
        noise = measured["noise"]
        drops = ", ".join(f"{loss} drops {noise[loss]['drop']:.1f}" for loss in ("ce", "gce"))
        typer.echo(f"  {noise['case']} at {noise['noise_rate']:g} {noise['noise_type']} noise: {drops}"
                   f" (PTNL's effect {'holds' if noise_effect_holds(measured) else 'does not hold'})")


@world_app.command("card")
def world_card(
    backbone: str = typer.Option("tiny-rn", help="tiny-rn or tiny-vit."),
    folder: Path = typer.Option(None, "--dir", help="Weights folder (default: the shipped weights)."),
    cache_dir: Path = typer.Option(None, help="Keep image features and finished trials here, so a stopped "
                                              "measurement resumes (default: a temporary folder)."),
):
    """Measure a tiny CLIP's model card again (zero-shot, linear probes, CoOp, noise), keeping its training record."""
    from ptlab.card import read_card, training_record

    try:
        card = read_card(backbone, folder)
    except (OSError, ValueError) as err:
        _fail(f"no readable model card for {backbone} in {folder or 'the package'}: {err}; run `ptlab world pretrain` first")
    _measure_card(backbone, training_record(card), folder, cache_dir)


@world_app.command("show")
def world_show(
    task: str = typer.Option("shapes", help="World task."),
    domain: str = typer.Option("photo", help="photo, outline or pixel."),
    out: Path = typer.Option(Path("world.png"), help="PNG file to write."),
    count: int = typer.Option(40, help="How many test images."),
):
    """Render a grid of a task's test images with their class names."""
    import numpy as np
    from PIL import Image

    from ptlab.config import DataConfig
    from ptlab.data.sources import DataError, load_dataset

    try:
        bundle = load_dataset(f"world:{task}", DataConfig(domain=domain))
    except DataError as err:
        _fail(str(err))
    split = bundle.split("test")
    pick = np.linspace(0, len(split) - 1, count).astype(int)
    cols = 10
    rows = (count + cols - 1) // cols
    size = 96
    sheet = Image.new("RGB", (cols * size, rows * size), "white")
    for k, i in enumerate(pick):
        sheet.paste(split.images.load(int(i)).resize((size, size), Image.NEAREST), ((k % cols) * size, (k // cols) * size))
    sheet.save(out)
    names = [bundle.classnames[split.labels[i]] for i in pick]
    typer.echo(f"wrote {out}: {', '.join(names)}")



@data_app.command("list")
def data_list():
    """Known dataset sources and the names each accepts."""
    from ptlab.data.sources import list_sources

    for scheme, help_text in list_sources():
        typer.echo(f"{scheme}:  {help_text}")


@data_app.command("check")
def data_check(
    source: str = typer.Argument(..., help="e.g. coop:DescribableTextures, folder:/data/x, world:shapes"),
    root: Path = typer.Option(None, "--data-root", help="Data root (default $PTLAB_DATA)."),
):
    """Check that a dataset is readable and well formed; list every problem found."""
    from ptlab.config import DataConfig
    from ptlab.data.sources import check_dataset, load_dataset, split_counts

    options = DataConfig(root=str(root) if root else None)
    problems = check_dataset(source, options)
    if problems:
        for p in problems:
            typer.secho(f"  - {p}", fg=typer.colors.RED)
        _fail(f"{source}: {len(problems)} problem(s)")
    bundle = load_dataset(source, options)
    counts = split_counts(bundle)
    for name, per_class in counts.items():
        typer.echo(f"{name:>6}: {int(per_class.sum())} images, {bundle.n_classes} classes, "
                   f"{int(per_class.min())} to {int(per_class.max())} a class")
    width = max(len(c) for c in bundle.classnames)
    typer.echo(f"{'class':<{width}}  " + "  ".join(f"{name:>6}" for name in counts))
    for c, classname in enumerate(bundle.classnames):
        typer.echo(f"{classname:<{width}}  " + "  ".join(f"{int(n[c]):>6}" for n in counts.values()))
    typer.secho(f"{source}: ok, every image decodes", fg=typer.colors.GREEN)
