"""Benchmark cases. Each returns {value, unit, target, met, ...}, or a list of them each named by a `figure`."""

from __future__ import annotations

import contextlib
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ptlab.data.features import encode_images
from ptlab.models.backbone import load_backbone
from ptlab.models.prompt import PromptDesign, PromptLearner
from ptlab.models.text import encode_embeddings
from ptlab.study.layout import TRIALS_DIR

DTD_CLASSES = (
    "banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted fibrous "
    "flecked freckled frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined marbled matted "
    "meshed paisley perforated pitted pleated polka-dotted porous potholed scaly smeared spiralled sprinkled "
    "stained stratified striped studded swirly veined waffled woven wrinkled zigzagged"
).split()
SHOTS = 16
BATCH = 32


def _timed(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _learner(backbone) -> PromptLearner:
    return PromptLearner(backbone, DTD_CLASSES, PromptDesign(n_ctx=16), torch.Generator().manual_seed(0))


def coop_epoch_speedup() -> dict:
    """One CoOp epoch (16 shots x 47 DTD classes, ViT-B-32, no augmentation): ptlab vs the naive path."""
    backbone = load_backbone("ViT-B-32:random")
    gen = torch.Generator().manual_seed(0)
    n = SHOTS * len(DTD_CLASSES)
    pixels = torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=gen)
    labels = torch.arange(len(DTD_CLASSES)).repeat_interleave(SHOTS)
    scale = backbone.model.logit_scale.exp().detach()
    steps = (n + BATCH - 1) // BATCH

    start = time.perf_counter()
    features = encode_images(backbone, pixels)  # once per study, shared by every trial
    feature_s = time.perf_counter() - start

    def step(learner, opt, image_features, target, fast):
        text = F.normalize(
            encode_embeddings(backbone.model, learner.prompt_embeddings(), learner.eot, truncate=fast, share_prefix=fast),
            dim=-1,
        )
        logits = scale * F.normalize(image_features, dim=-1) @ text.T
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return logits

    fast_learner = _learner(backbone)
    fast_opt = torch.optim.SGD([fast_learner.ctx], lr=0.002, momentum=0.9)
    order = torch.randperm(n, generator=gen)

    def fast_epoch():
        for s in range(steps):
            idx = order[s * BATCH : (s + 1) * BATCH]
            step(fast_learner, fast_opt, features[idx], labels[idx], True)

    start = time.perf_counter()
    fast_epoch()
    fast_s = time.perf_counter() - start

    naive_learner = _learner(backbone)
    naive_opt = torch.optim.SGD([naive_learner.ctx], lr=0.002, momentum=0.9)
    measured = 2
    start = time.perf_counter()
    for s in range(measured):
        idx = order[s * BATCH : (s + 1) * BATCH]
        with torch.no_grad():
            image_features = backbone.model.encode_image(pixels[idx])
        step(naive_learner, naive_opt, image_features, labels[idx], False)
    naive_s = (time.perf_counter() - start) / measured * steps

    # Same context in both paths: logits must agree.
    check = _learner(backbone)
    idx = order[:BATCH]
    with torch.no_grad():
        text_fast = F.normalize(encode_embeddings(backbone.model, check.prompt_embeddings(), check.eot), dim=-1)
        text_naive = F.normalize(
            encode_embeddings(backbone.model, check.prompt_embeddings(), check.eot, truncate=False, share_prefix=False), dim=-1
        )
        naive_logits = scale * F.normalize(backbone.model.encode_image(pixels[idx]), dim=-1) @ text_naive.T
        fast_logits = scale * F.normalize(features[idx], dim=-1) @ text_fast.T
    diff = float((naive_logits - fast_logits).abs().max())
    ratio = naive_s / fast_s
    return {
        "value": round(ratio, 1), "unit": "x faster", "target": ">= 10x", "met": ratio >= 10 and diff <= 1e-4,
        "ptlab_epoch_s": round(fast_s, 2), "naive_epoch_s": round(naive_s, 1), "naive_steps_measured": measured,
        "one_time_feature_s": round(feature_s, 1), "max_logit_diff": diff,
        "note": f"ptlab {fast_s:.2f}s vs naive {naive_s:.1f}s/epoch; max |dlogit| {diff:.1e}; features once {feature_s:.0f}s",
    }


def eot_truncation_speedup() -> dict:
    """Text tower forward+backward for the 47 CoOp prompts: truncated at the EOT vs the full 77 tokens."""
    backbone = load_backbone("ViT-B-32:random")
    learner = _learner(backbone)

    def run(truncate):
        feats = encode_embeddings(backbone.model, learner.prompt_embeddings(), learner.eot, truncate=truncate, share_prefix=False)
        feats.square().sum().backward()

    run(True)
    full = _timed(lambda: run(False))
    cut = _timed(lambda: run(True))
    shared = _timed(lambda: encode_embeddings(backbone.model, learner.prompt_embeddings(), learner.eot).square().sum().backward())
    ratio = full / cut
    return {
        "value": round(ratio, 2), "unit": "x faster", "target": ">= 2.5x", "met": ratio >= 2.5,
        "full_s": round(full, 3), "truncated_s": round(cut, 3), "truncated_shared_prefix_s": round(shared, 3),
        "note": f"77 tokens {full:.2f}s, truncated {cut:.2f}s, + shared prefix {shared:.2f}s",
    }


def _trial_peak_rss(config_yaml: str, cache: Path) -> float:
    """Peak resident memory (MB) of `ptlab trial run` in a fresh process."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_yaml)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    env = {**os.environ, "PTLAB_CACHE": str(cache), "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-m", "ptlab", "trial", "run", "-c", f.name, "--quiet"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    os.unlink(f.name)
    return max(after, before) / 1024


def peak_memory() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tiny = _trial_peak_rss("method: coop\nbackbone: world:tiny-rn\ndataset: world:shapes\ntrain: {epochs: 5}\n", Path(tmp))
        big = _trial_peak_rss(
            "method: coop\nbackbone: ViT-B-32:random\ndataset: world:shapes\nshots: 4\ntrain: {epochs: 1, views: 1}\n",
            Path(tmp),
        )
    return {
        "value": round(tiny), "unit": "MB", "target": "< 1500 MB", "met": tiny < 1500, "vit_b32_mb": round(big),
        "note": f"tiny-rn trial {tiny:.0f} MB; ViT-B-32 trial {big:.0f} MB (ru_maxrss; the larger of the two runs bounds the second)",
    }


def feature_cache_reuse() -> dict:
    from ptlab.config import TrainConfig, TrialConfig
    from ptlab.methods import run_trial
    from ptlab.methods.base import TrialContext

    with tempfile.TemporaryDirectory() as tmp:
        base = TrialConfig(method="coop", backbone="world:tiny-rn", dataset="world:shapes", train=TrainConfig(epochs=2))
        first = run_trial(base, TrialContext(cache_dir=Path(tmp)))
        # Same seed, other loss and noise: the grid neighbours a study runs share every feature.
        second = run_trial(base.with_updates({"loss": "gce", "noise_type": "symmetric", "noise_rate": 0.25}), TrialContext(cache_dir=Path(tmp)))
    encoded = int(second.metrics["images_encoded"])
    return {
        "value": encoded, "unit": "images", "target": "0", "met": encoded == 0,
        "first_trial_images": int(first.metrics["images_encoded"]),
        "note": f"first trial encoded {int(first.metrics['images_encoded'])} images, the second {encoded}",
    }


def _run_study(spec, study_dir: Path, connection) -> tuple[float, float, list[dict]]:
    """Run a study the way `ptlab study run` does; its start, wall time and trial records in order of ending."""
    from ptlab.study.store import KEY, ResultStore
    from ptlab.study.trial import TrialFiles
    from ptlab.study.tuner import run_study

    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):  # the study's progress lines would break the table
        finished = run_study(spec, study_dir, connection)
    wall = time.time() - start
    keys = ResultStore(study_dir).results()[KEY].to_list()
    records = [TrialFiles(study_dir / TRIALS_DIR / key).read_record() for key in keys]
    if not finished or any(r is None or r["status"] == "failed" for r in records):
        raise RuntimeError(f"study {spec.name} did not finish every trial; see {study_dir}")
    return start, wall, sorted(records, key=lambda r: r["timings"]["finished_at"])


def _runner_overhead(backbone: str, runner: str, trials: int, folder: Path, connection) -> dict:
    """Per-trial overhead of one runner over a grid of tiny trials run one at a time.

    A trial's overhead is the time between the end of the trial before it and
    its own end, less the recipe time its record holds: launch, imports,
    Train job, reporting, teardown. The first trial also carries the study's
    start (Tune's set-up, fresh Ray worker processes); it is reported apart.
    """
    from ptlab.study.spec import validate_study

    spec = validate_study({
        "name": f"overhead_{runner}", "method": "coop", "backbone": backbone, "dataset": "world:shapes", "shots": 2,
        "train": {"epochs": 2, "views": 1, "batch_size": 8}, "runner": runner, "max_concurrent": 1,
        "seeds": list(range(1, trials + 1)),
    })
    start, wall, records = _run_study(spec, folder / runner, connection)
    ends = [r["timings"]["finished_at"] for r in records]
    recipe = [r["timings"]["recipe_s"] for r in records]
    steady = [ends[i] - ends[i - 1] - recipe[i] for i in range(1, len(records))]
    return {
        "per_trial_s": round(statistics.median(steady), 2),
        "per_trial_each_s": [round(x, 2) for x in steady],
        "first_trial_s": round(ends[0] - start - recipe[0], 2),
        "amortised_s": round((wall - sum(recipe)) / len(records), 2),
        "in_trial_s": round(statistics.mean(r["timings"]["wall_s"] - r["timings"]["recipe_s"] for r in records), 2),
        "recipe_s": round(statistics.mean(recipe), 2),
    }


@contextlib.contextmanager
def _ray_cluster():
    """A local Ray cluster started as `ptlab study run` starts one."""
    import ray

    from ptlab.study.cluster import connect

    connection = connect()
    try:
        yield connection
    finally:
        ray.shutdown()


def trial_overhead() -> list[dict]:
    """Per-trial overhead of the Ray Train and the inline runner, side by side on one cluster."""
    from ptlab.world.pretrain import build_model, save

    trials = 5
    with tempfile.TemporaryDirectory() as tmp, _ray_cluster() as connection:
        folder = Path(tmp)
        save(build_model("tiny-rn", seed=0), "tiny-rn", {}, folder / "backbone")
        backbone = f"local-dir:{folder / 'backbone'}"
        runners = {runner: _runner_overhead(backbone, runner, trials, folder, connection) for runner in ("train", "inline")}
    rows = []
    for runner, limit in (("train", 8.0), ("inline", 2.0)):
        r = runners[runner]
        rows.append({
            "figure": f"{runner}_runner", "value": r["per_trial_s"], "unit": "s/trial", "target": f"<= {limit:g} s",
            "met": r["per_trial_s"] <= limit, **r, "trials": trials,
            "note": f"{r['per_trial_s']:.2f} s/trial between trials (first {r['first_trial_s']:.1f} s, "
                    f"amortised over {trials} {r['amortised_s']:.2f} s) around a {r['recipe_s']:.2f} s recipe",
        })
    return rows


def default_study_overhead() -> dict:
    """Share of the fixed-lr twin's slot time (studies/noise_grid_fixed.yaml, run in full) that no recipe used."""
    from ptlab.study.spec import load_study
    from ptlab.study.tuner import trial_slots

    spec = load_study(Path(__file__).resolve().parents[1] / "studies" / "noise_grid_fixed.yaml")
    with tempfile.TemporaryDirectory() as tmp, _ray_cluster() as connection:
        slots = trial_slots(spec, connection)
        _, wall, records = _run_study(spec, Path(tmp), connection)
    recipe = sum(r["timings"]["recipe_s"] for r in records)
    # start-up, per-trial overhead and a slot left idle at the end all count
    share = 1 - recipe / (slots * wall)
    return {
        "value": round(100 * share, 1), "unit": "%", "target": "<= 25%", "met": share <= 0.25,
        "study": spec.name, "runner": spec.runner, "trials": len(records), "slots": slots, "wall_s": round(wall, 1),
        "recipe_slot_s": round(recipe, 1),
        "note": f"{spec.name} ({spec.runner}): {len(records)} trials on {slots} slots in {wall:.0f} s, recipes {recipe:.0f} slot-s",
    }


TINY_TRIAL = "method: coop\nbackbone: world:tiny-rn\ndataset: world:shapes\ntrain: {epochs: 1, augment: false}\n"
HEAVY_MODULES = ("torch", "torchvision", "open_clip", "timm", "ray", "polars", "pyarrow")


def _import_seconds(importtime_log: str) -> dict[str, float]:
    """Cumulative import seconds of each heavy package from `python -X importtime` output (0 when not imported)."""
    seconds = dict.fromkeys(HEAVY_MODULES, 0.0)
    total = 0.0
    for line in importtime_log.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if not cumulative.strip().isdigit():
            continue  # the header line
        depth = len(name) - len(name.lstrip())
        name = name.strip()
        if name in seconds and not seconds[name]:  # its first, outermost import holds the whole cost
            seconds[name] = int(cumulative) / 1e6
        if depth == 1:
            total += int(cumulative) / 1e6
    return {**{k: round(v, 2) for k, v in seconds.items()}, "all": round(total, 2)}


# A source tree of an earlier ptlab (e.g. `git archive <commit> | tar -x -C DIR`): the start-up and status
# cases then time its processes too, alternating with this tree's, so before and after share the load.
BASELINE_ENV = "PTLAB_BENCH_BASELINE"


def _trees() -> dict[str, str | None]:
    baseline = os.environ.get(BASELINE_ENV)
    return {"current": None, **({"baseline": baseline} if baseline else {})}


def _fresh_ptlab(args: list[str], env: dict[str, str] | None = None, tree: str | None = None
                 ) -> tuple[float, dict[str, float], str]:
    """Wall seconds, import seconds by package and stdout of one fresh `python -m ptlab ...` process (of `tree` if given)."""
    env = {**os.environ, **(env or {}), **({"PYTHONPATH": tree} if tree else {})}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ptlab", *args], capture_output=True, text=True,
                          env=env, cwd=tree, check=True)
    return time.perf_counter() - start, _import_seconds(done.stderr), done.stdout


def _median_run(runs: list[tuple]) -> tuple:
    return sorted(runs, key=lambda r: r[0])[len(runs) // 2]


def _baseline_fields(runs: dict[str, list[tuple]], what: str) -> tuple[dict, str]:
    if "baseline" not in runs:
        return {}, ""
    base = _median_run(runs["baseline"])
    return ({f"baseline_{what}": round(base[0], 2), "baseline_import_s": base[-1], "baseline": os.environ[BASELINE_ENV]},
            f"; baseline tree {base[0]:.2f} s, alternating")


def trial_startup() -> dict:
    """What a fresh trial process spends before and around its recipe: `ptlab trial run` of a 1-epoch tiny CoOp trial.

    The feature cache is filled by a first run, so the measured runs spend
    their recipe time training, not encoding; start-up is wall time less the
    recipe time the record holds (imports, backbone load, provenance, exit).
    """
    import json

    with tempfile.TemporaryDirectory() as tmp:
        config, record = Path(tmp) / "trial.yaml", Path(tmp) / "record.json"
        config.write_text(TINY_TRIAL)
        args = ["trial", "run", "-c", str(config), "-o", str(record), "--quiet"]
        env = {"PTLAB_CACHE": str(Path(tmp) / "cache")}
        _fresh_ptlab(args, env)
        runs = {name: [] for name in _trees()}
        for _ in range(5):
            for name, tree in _trees().items():
                wall, imports, _ = _fresh_ptlab(args, env, tree)
                recipe = json.loads(record.read_text())["timings"]["recipe_s"]
                runs[name].append((wall - recipe, wall, imports))
    startup, wall, imports = _median_run(runs["current"])
    baseline, versus = _baseline_fields(runs, "startup_s")
    return {
        "value": round(startup, 2), "unit": "s", "target": "<= 5 s", "met": startup <= 5, "wall_s": round(wall, 2),
        "import_s": imports, **baseline,
        "note": f"fresh `ptlab trial run`: {startup:.2f} s outside the recipe of a {wall:.1f} s trial; imports "
                f"{imports['all']:.2f} s (torch {imports['torch']:.2f}, open_clip {imports['open_clip']:.2f}, "
                f"ray {imports['ray']:.2f}); median of 5{versus}",
    }


def study_status() -> dict:
    """`ptlab study status` of a finished 4-trial grid, in a fresh process; it must import neither torch nor Ray."""
    from ptlab.study.spec import validate_study

    spec = validate_study({
        "name": "status", "method": "coop", "backbone": "world:tiny-rn", "dataset": "world:shapes", "shots": 2,
        "train": {"epochs": 1, "views": 1, "batch_size": 8}, "runner": "inline", "factors": {"loss": ["ce", "gce"]},
        "seeds": [1, 2],
    })
    with tempfile.TemporaryDirectory() as tmp, _ray_cluster() as connection:
        _run_study(spec, Path(tmp), connection)
        runs = {name: [] for name in _trees()}
        for _ in range(5):
            for name, tree in _trees().items():
                wall, imports, shown = _fresh_ptlab(["study", "status", tmp], tree=tree)
                runs[name].append((wall, shown, imports))
    wall, shown, imports = _median_run(runs["current"])
    heavy = [name for name in ("torch", "ray") if imports[name]]
    baseline, versus = _baseline_fields(runs, "s")
    return {
        "value": round(wall, 2), "unit": "s", "target": "<= 1 s, no torch/ray", "met": wall <= 1 and not heavy,
        "import_s": imports, "shows_trials": "4/4 finished" in shown, **baseline,
        "note": f"fresh `ptlab study status`: {wall:.2f} s, imports {imports['all']:.2f} s "
                f"({', '.join(heavy) or 'no torch, no ray'} imported); median of 5{versus}",
    }


def _trial_worker_rss() -> dict[int, float]:
    """Resident MB of every Ray process that runs trials (its title names the trainable: ray::ImplicitFunc...)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                rss = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("VmRSS:"))
                found[int(proc.name)] = int(rss.split()[1]) / 1024
        except (OSError, StopIteration):
            continue  # ended while being read
    return found


def worker_memory() -> dict:
    """Resident memory of the one reused inline worker that runs every trial of the default study, trial by trial.

    The study is studies/noise_grid_fixed.yaml as shipped, one trial at a time. The
    worker is sampled from outside every 0.2 s, so the figure does not depend
    on what the trial code records; each trial's figure is the last sample
    before its record says it finished.
    """
    import threading

    import yaml

    from ptlab.study.spec import validate_study

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "studies" / "noise_grid_fixed.yaml").read_text())
    spec = validate_study({**data, "max_concurrent": 1, "report": None})
    samples: list[tuple[float, dict[int, float]]] = []
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            samples.append((time.time(), _trial_worker_rss()))

    sampler = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory() as tmp, _ray_cluster() as connection:
        sampler.start()
        try:
            _, _, records = _run_study(spec, Path(tmp), connection)
        finally:
            stop.set()
            sampler.join()
    workers = {pid for _, seen in samples for pid in seen}
    rss = []
    for record in records:
        before = [seen for at, seen in samples if at <= record["timings"]["finished_at"] and seen]
        rss.append(round(max(before[-1].values()), 1))
    growth = rss[-1] - rss[3]
    return {
        "value": round(growth), "unit": "MB", "target": "<= 50 MB", "met": growth <= 50, "rss_mb": rss,
        "after_4_mb": rss[3], "after_last_mb": rss[-1], "trials": len(rss), "worker_processes": len(workers),
        "note": f"one inline worker, {len(rss)} noise-grid trials: {rss[3]:.0f} MB after 4, {rss[-1]:.0f} MB after "
                f"{len(rss)} (growth {growth:+.0f} MB; {len(workers)} worker process(es))",
    }

def thread_sizing() -> dict:
    """A text-tower step (47 CoOp prompts, ViT-B-32, forward+backward) on cores another job keeps busy: all cores vs sized threads.

    Three busy-looping processes stand in for the other jobs of a shared
    machine for the length of the case; the sized count is what
    ptlab.resources gives a trial started then.
    """
    from ptlab.resources import trial_threads, usable_cores

    backbone = load_backbone("ViT-B-32:random")
    learner = _learner(backbone)

    def step():
        encode_embeddings(backbone.model, learner.prompt_embeddings(), learner.eot).square().sum().backward()

    cores = usable_cores()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores + 1)]
    try:
        time.sleep(2)  # until they hold the run queue
        sized = trial_threads()
        times = {}
        for threads in (cores, sized):
            torch.set_num_threads(threads)
            step()
            times[threads] = _timed(step)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    ratio = times[cores] / times[sized]
    return {
        "value": round(ratio, 2), "unit": "x faster", "target": ">= 1x", "met": ratio >= 1 - 1e-9,
        "busy_processes": len(burners), "cores": cores, "sized_threads": sized,
        "all_cores_s": round(times[cores], 3), "sized_s": round(times[sized], 3),
        "note": f"{len(burners)} busy processes on {cores} cores: {cores} threads {times[cores]:.2f} s/step, "
                f"sized {sized} thread(s) {times[sized]:.2f} s/step",
    }


# Where default_study_wall leaves its study folder (for its report); unset: a temporary folder, removed.
KEEP_STUDY_ENV = "PTLAB_BENCH_STUDY_DIR"


def default_study_wall() -> dict:
    """Wall time of the default study (studies/noise_grid.yaml, a tuned grid on Ray Train) from a cold cache.

    Outside recipes: 1 - recipe slot-seconds / (slots x wall). A pruned trial
    writes no record, so its recipe time is its epochs at the mean per-epoch
    recipe time of the study's finished trials.
    """
    import polars as pl

    from ptlab.study.spec import load_study
    from ptlab.study.store import ResultStore
    from ptlab.study.tuner import run_study, trial_slots

    spec = load_study(Path(__file__).resolve().parents[1] / "studies" / "noise_grid.yaml")
    limit = 12 * 60
    keep = os.environ.get(KEEP_STUDY_ENV)
    folder = contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory()
    with folder as tmp, _ray_cluster() as connection:
        slots = trial_slots(spec, connection)
        start = time.time()
        with contextlib.redirect_stdout(io.StringIO()):
            finished = run_study(spec, Path(tmp), connection)
        wall = time.time() - start
        df = ResultStore(tmp).results()
    if not finished or df.height != spec.n_planned():
        raise RuntimeError(f"{spec.name}: {df.height} of {spec.n_planned()} trials ended")
    ended = df.filter(pl.col("recipe_s").is_not_null())
    per_epoch = (ended["recipe_s"] / ended["epochs_done"]).mean()
    pruned = df.filter(pl.col("recipe_s").is_null())
    recipe = ended["recipe_s"].sum() + per_epoch * pruned["epochs_done"].sum()
    outside = 1 - recipe / (slots * wall)
    counts = {f"{phase}/{status}": n for phase, status, n in df.group_by("phase", "status").len().iter_rows()}
    return {
        "value": round(wall, 1), "unit": "s", "target": f"<= {limit} s", "met": wall <= limit,
        "study": spec.name, "runner": spec.runner, "trials": df.height, "slots": slots, "counts": counts,
        "outside_recipes_pct": round(100 * outside, 1), "recipe_slot_s": round(recipe, 1),
        "mean_trial_wall_s": round(df["wall_s"].mean(), 2),
        # slot time no recipe used, per trial: start-up, Train job, reporting, idle slots at the end
        "outside_per_trial_s": round((slots * wall - recipe) / df.height, 2),
        "note": f"{spec.name} ({spec.runner}): {df.height} trials on {slots} slots in {wall:.0f} s, "
                f"{100 * outside:.0f}% of slot time outside recipes",
    }


def storage_cost() -> dict:
    """The fixed-lr default twin (studies/noise_grid_fixed.yaml) with its files in a local folder, then in S3.

    Both on one local cluster, cold caches each (the storage run's node cache is
    a fresh folder); the S3 server is moto's on 127.0.0.1, so the figure is
    ptlab's copying, not a network's latency.
    """
    from ptlab.study.spec import load_study
    from ptlab.study.storage import NODE_DIR_ENV

    path = Path(__file__).resolve().parents[1] / "studies" / "noise_grid_fixed.yaml"
    from bench.s3 import local_s3_server

    with tempfile.TemporaryDirectory() as tmp, local_s3_server("bench"):
        os.environ[NODE_DIR_ENV] = str(Path(tmp) / "node")  # forwarded to the cluster's workers
        try:
            with _ray_cluster() as connection:
                _, local_wall, records = _run_study(load_study(path), Path(tmp) / "local", connection)
                spec = load_study(path, ["storage=s3://bench/noise_grid_fixed"])
                _, s3_wall, _ = _run_study(spec, Path(tmp) / "s3", connection)
        finally:
            os.environ.pop(NODE_DIR_ENV, None)
    ratio = s3_wall / local_wall
    return {
        "value": round(ratio, 3), "unit": "x", "target": "<= 1.1x", "met": ratio <= 1.1,
        "study": "noise_grid_fixed", "trials": len(records), "local_wall_s": round(local_wall, 1),
        "s3_wall_s": round(s3_wall, 1),
        "note": f"{len(records)} trials: {local_wall:.0f} s with a local folder, {s3_wall:.0f} s with S3 storage (moto, loopback)",
    }


CASES = {
    "coop_epoch_speedup": coop_epoch_speedup,
    "eot_truncation_speedup": eot_truncation_speedup,
    "peak_memory": peak_memory,
    "feature_cache_reuse": feature_cache_reuse,
    "trial_overhead": trial_overhead,
    "default_study_overhead": default_study_overhead,
    "trial_startup": trial_startup,
    "study_status": study_status,
    "worker_memory": worker_memory,
    "thread_sizing": thread_sizing,
    "default_study_wall": default_study_wall,
    "storage_cost": storage_cost,
}
