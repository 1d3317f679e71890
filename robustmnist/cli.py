"""The `robustmnist` command line: thin typer wrappers that build configs and call functions."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from robustmnist import RobustMnistError, __version__

app = typer.Typer(help="Train MNIST ConvNets with stroke-thickness augmentation, test them on "
                  "thin and thick pens, write reports, read your own digit photos.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Fetch, verify and export MNIST.", no_args_is_help=True)
augment_app = typer.Typer(help="Look at augmentation policies.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(augment_app, name="augment")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="MNIST folder/cache (torchvision layout). Default: $ROBUSTMNIST_DATA_DIR "
    "or ~/.cache/robustmnist.", show_default=False)]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, only results.")]


def handles_errors(fn: F) -> F:
    """Turn RobustMnistError into one 'error: ...' line and exit code 1; Ctrl-C into 130."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RobustMnistError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted: finished epochs are saved; `robustmnist train --resume` or "
                      "running the same `robustmnist run` again continues from them")
            raise typer.Exit(130) from None
    return wrapper  # type: ignore[return-value]


def _log(quiet: bool) -> Callable[[str], None]:
    return (lambda _m: None) if quiet else (lambda m: err.print(m, highlight=False))


def _version(value: bool) -> None:
    if value:
        out.print(f"robustmnist {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version,
                                               is_eager=True, help="Show the version.")] = False,
         ) -> None:
    """robustmnist: stroke-thickness robustness of MNIST classifiers."""


# --------------------------------------------------------------------------- data

@data_app.command("fetch")
@handles_errors
def data_fetch(data_dir: DataDir = None, quiet: Quiet = False) -> None:
    """Get the four MNIST files (verified by MD5) into the cache; instant once cached."""
    from robustmnist.data import fetch

    folder = fetch(data_dir, log=_log(quiet))
    out.print(f"MNIST ready (MD5 verified) in {folder}")


@data_app.command("export")
@handles_errors
def data_export(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write PNGs + labels.csv into.")],
    split: Annotated[str, typer.Option(help="train | test")] = "test",
    family: Annotated[str, typer.Option(help="clean | delta | absolute (test split only)")] = "clean",
    level: Annotated[float, typer.Option(help="Level of the family, px.")] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty folder.")] = False,
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Write a split, or a thickness-perturbed test set, as PNG files plus labels.csv."""
    import torch

    from robustmnist.data import MD5, export_images, load_split
    from robustmnist.perturb import load_or_build

    if family != "clean" and split != "test":
        raise RobustMnistError("perturbed sets are built from the test split; use --split test")
    loaded = load_split(split, data_dir, log=_log(quiet))  # type: ignore[arg-type]
    images = loaded.images
    if family != "clean":
        pset, _ = load_or_build(images[:, 0].numpy(), family, level,
                                MD5["t10k-images-idx3-ubyte"], _cache_dir(data_dir))
        images = torch.from_numpy(pset.images).unsqueeze(1)
    count = export_images(images, loaded.labels, out_dir, force=force)
    out.print(f"wrote {count} PNGs and labels.csv to {out_dir}")


def _aug_config(policy: str, aug_range: str | None, aug_p: float | None) -> Any:
    """The AugConfig for --aug/--aug-range MIN,MAX/--aug-p (policy defaults where unset)."""
    from robustmnist.augmentation import AugConfig

    lo = hi = None
    if aug_range is not None:
        try:
            lo, hi = (float(v) for v in aug_range.split(","))
        except ValueError:
            raise RobustMnistError(f"--aug-range {aug_range!r}: expected MIN,MAX such as -1,2") from None
    return AugConfig.from_policy(policy, delta_min_px=lo, delta_max_px=hi, p_untouched=aug_p)


def _cache_dir(data_dir: Path | None) -> Path:
    from robustmnist.data import default_data_dir

    return (data_dir or default_data_dir()) / "perturbed"


# --------------------------------------------------------------------------- train

class _RichProgress:
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.bar = Progress(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                            BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  "
                                       "{task.fields[ips]:,.0f} img/s"),
                            TimeRemainingColumn(), console=err, transient=True)
        self.task: Any = None

    def start(self, epoch: int, steps: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("train", total=steps, epoch=epoch, epochs=self.epochs,
                                      loss=float("nan"), acc=0.0, ips=0.0)

    def step(self, loss: float, accuracy: float, images_per_second: float) -> None:
        task = self.bar.tasks[-1]
        advance = min(10, int(task.total or 0) - int(task.completed))
        self.bar.update(self.task, advance=advance, loss=loss, acc=accuracy, ips=images_per_second)

    def end(self, row: dict[str, float]) -> None:
        self.bar.stop()
        self.bar.remove_task(self.task)
        err.print(f"epoch {int(row['epoch'])}/{self.epochs}  train loss {row['train_loss']:.4f}  "
                  f"acc {100 * row['train_accuracy']:.2f}%  test loss {row['test_loss']:.4f}  "
                  f"test acc {100 * row['test_accuracy']:.2f}%  {row['epoch_seconds']:.1f}s  "
                  f"{row['images_per_second']:,.0f} img/s", highlight=False)


@app.command()
@handles_errors
def train(
    aug: Annotated[str, typer.Option(help="Augmentation policy: none | thickness | thin | thick "
                                     "| thickness+affine.")] = "none",
    aug_range: Annotated[str | None, typer.Option(
        help="Stroke change range MIN,MAX in px of width at 28x28 (<0 thins), within -2,2. "
             "Default: the policy's (thickness -1,2; thin -1,0; thick 0,2).")] = None,
    aug_p: Annotated[float | None, typer.Option(
        help="Probability that an image keeps its original strokes (default 0.2).")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the 60,000 training images.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per Adam step.")] = 512,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed for init, batch order, augmentation.")] = 0,
    model: Annotated[str, typer.Option(help="Model name (see models.MODELS).")] = "baseline",
    device: Device = "auto",
    run_dir: Annotated[Path | None, typer.Option(
        "--out", help="Run folder. Default: runs/<aug>-seed<seed>.", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an unfinished run.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over in an existing run folder.")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all cores).")] = None,
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Train a model (classic recipe by default) into a run folder; resumable."""
    import torch

    from robustmnist.training import TrainConfig, resolve_device
    from robustmnist.training import train as train_fn

    aug_config = _aug_config(aug, aug_range, aug_p)
    config = TrainConfig(model=model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         device=device, aug=aug_config).validate()
    if threads:
        torch.set_num_threads(threads)
    run_dir = run_dir or Path("runs") / f"{aug}-seed{seed}"
    if not quiet:
        err.print(f"training {model} with aug={aug} on {resolve_device(device)} -> {run_dir}")
    result = train_fn(config, run_dir, resume=resume, force=force, data_dir=data_dir,
                      progress=None if quiet else _RichProgress(epochs), log=_log(quiet))  # type: ignore[arg-type]
    final = result.metrics[-1] if result.metrics else {}
    out.print(f"{run_dir}: test accuracy {100 * final.get('test_accuracy', float('nan')):.2f}% "
              f"after {len(result.metrics)} epochs"
              + (f" ({result.seconds:.0f}s)" if result.seconds else " (already complete)"))


# --------------------------------------------------------------------------- eval

@app.command("eval")
@handles_errors
def eval_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(help="checkpoint.pt files or run folders.")],
    sweep_width: Annotated[bool, typer.Option("--sweep-width", help="Also evaluate on the "
                                              "thickness-perturbed test sets.")] = False,
    family: Annotated[list[str] | None, typer.Option(help="delta and/or absolute (repeatable). "
                                                     "Default: both.")] = None,
    levels: Annotated[str | None, typer.Option(help="Comma-separated levels in px (default: the "
                                               "family's defaults).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write sweep.csv, predictions.npz "
                                                 "and sweep.json here.")] = None,
    device: Device = "auto",
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Clean test accuracy and loss per checkpoint; with --sweep-width, every thickness level."""
    from robustmnist.evaluation import corruption_errors, parse_levels, save_sweep, sweep
    from robustmnist.training import resolve_device

    if (family or levels) and not sweep_width:
        raise RobustMnistError("--family/--levels choose sweep levels; add --sweep-width")
    try:
        level_list = [float(v) for v in levels.split(",")] if levels else None
    except ValueError:
        raise RobustMnistError(f"--levels {levels!r}: expected numbers like -1,0.5,2") from None
    families = parse_levels(family or ["delta", "absolute"], level_list) if sweep_width else {}
    result = sweep(checkpoints, families, device=resolve_device(device), data_dir=data_dir,
                   cache_dir=_cache_dir(data_dir), log=_log(quiet))
    frame = result.frame()
    table = Table(title="test accuracy (%)" + (" by stroke level" if families else ""))
    table.add_column("run")
    table.add_column("variant")
    sets = frame.drop_duplicates(["family", "level"])[["family", "level", "measured_thickness"]]
    for _, s in sets.iterrows():
        name = "clean" if s["family"] == "clean" else f"{s['family'][:3]} {s['level']:+g}"
        table.add_column(f"{name}\n{s['measured_thickness']:.1f}px", justify="right")
    for run, g in frame.groupby("run", sort=False):
        table.add_row(str(run), str(g["variant"].iloc[0]),
                      *[f"{100 * a:.2f}" for a in g["accuracy"]])
    out.print(table)
    for _, s in frame.drop_duplicates(["family", "level"]).iterrows():
        if s["erased_fraction"] > 0.05:
            err.print(f"warning: {s['family']} {s['level']:+g} leaves {100 * s['erased_fraction']:.0f} % "
                      f"of digits with under 10 % of their ink (ink ratio {s['ink_ratio']:.2f}); "
                      "accuracy there measures erased digits", highlight=False)
    if not families:
        for _, r in frame.iterrows():
            out.print(f"{r['run']}: accuracy {100 * r['accuracy']:.2f}%  nll {r['nll']:.4f}")
    if "delta" in families:
        ce = corruption_errors(frame)
        if ce["ce"].notna().any():
            out.print(ce[["run", "variant", "seed", "ce", "relative_ce"]].round(1).to_string(index=False))
    if out_dir is not None:
        paths = save_sweep(result, out_dir)
        out.print(f"wrote {paths['csv']} ({len(frame)} rows)")


# --------------------------------------------------------------------------- run / report

@app.command("run")
@handles_errors
def run_cmd(
    experiment: Annotated[str | None, typer.Argument(
        help="Experiment TOML file, or a built-in name (quickstart, thickness). "
             "Default: quickstart.", show_default=False)] = None,
    jobs: Annotated[int, typer.Option(help="Trainings in parallel processes (CPU threads are "
                                      "split between them).")] = 1,
    output: Annotated[Path | None, typer.Option("--out", help="Override the file's output "
                                                "folder (the report then goes to OUT/report).")] = None,
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Train every (variant, seed) not yet complete, sweep all checkpoints, write the report."""
    import time
    from datetime import datetime

    from robustmnist.evaluation import save_sweep, sweep
    from robustmnist.experiments import (
        load_experiment,
        pending_runs,
        record_invocation,
        resolve_path,
        sweep_is_current,
        train_all,
    )
    from robustmnist.training import resolve_device

    if jobs < 1:
        raise RobustMnistError(f"--jobs must be >= 1, got {jobs}")
    exp = load_experiment(resolve_path(experiment), output)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    todo, done = pending_runs(exp)
    total = done + len(todo)
    log = _log(quiet)
    from robustmnist.data import fetch

    fetch(data_dir, log=log)  # once, visibly, before any training
    log(f"experiment {exp.name}: {total} runs ({done} complete, {len(todo)} to train) -> {exp.output}")

    def on_done(run_dir: str, seconds: float, n_done: int, n_total: int) -> None:
        elapsed = time.perf_counter() - t0
        trained = n_done - done
        eta = elapsed / trained * (n_total - n_done) if trained else 0.0
        log(f"[{n_done}/{n_total}] {run_dir} done in {seconds:.0f}s; ETA {eta / 60:.1f} min")

    train_seconds = train_all(exp, jobs=jobs, data_dir=data_dir, on_done=on_done)
    sweep_dir = exp.output / "sweep"
    sweep_seconds = 0.0
    if sweep_is_current(exp, sweep_dir):
        log(f"sweep in {sweep_dir} is up to date")
    else:
        t1 = time.perf_counter()
        result = sweep([run_dir / "checkpoint.pt" for *_, run_dir in exp.runs()], exp.families,
                       device=resolve_device(exp.train.device), data_dir=data_dir,
                       cache_dir=_cache_dir(data_dir), log=log)
        save_sweep(result, sweep_dir)
        sweep_seconds = time.perf_counter() - t1
    record_invocation(exp, {"started": started, "trained_runs": len(todo), "jobs": jobs,
                            "train_seconds": train_seconds, "sweep_seconds": sweep_seconds,
                            "wall_seconds": time.perf_counter() - t0})
    from robustmnist.reports import write_report

    report = write_report([sweep_dir], exp.report, title=exp.name, question=exp.description)
    out.print(f"{exp.name}: {total} runs complete; report in {report} "
              f"({time.perf_counter() - t0:.0f}s this time)")


@app.command()
@handles_errors
def report(
    results: Annotated[list[Path], typer.Argument(help="Sweep folders (with sweep.csv) or "
                                                  "sweep.csv files.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report folder. Default: "
                                                 "reports/<name>.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option(help="Report name (default: the experiment's).")] = None,
) -> None:
    """Write the comparison report (README.md, CSV tables, plots) from result files only."""
    from robustmnist.reports import experiment_of, write_report

    exp_name, question = experiment_of(results)
    name = name or exp_name
    path = write_report(results, out_dir or Path("reports") / name, title=name, question=question)
    out.print(f"wrote report {path}")


# --------------------------------------------------------------------------- measure

@app.command()
@handles_errors
def measure(
    split: Annotated[str, typer.Option(help="train | test")] = "test",
    family: Annotated[str, typer.Option(help="clean | delta | absolute (test only)")] = "clean",
    level: Annotated[float, typer.Option(help="Level of the family, px.")] = 0.0,
    reference: Annotated[Path | None, typer.Option(help="Morpho-MNIST t10k-morpho.csv to "
                                                   "compare with (clean test set).")] = None,
    out_csv: Annotated[Path | None, typer.Option("--out", help="Per-digit CSV to write.")] = None,
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Measure stroke thickness (Morpho-MNIST definition) and ink ratio of a set."""
    import time

    import numpy as np
    import pandas as pd

    from robustmnist import artifacts
    from robustmnist.data import MD5, load_split
    from robustmnist.perturb import load_or_build

    loaded = load_split(split, data_dir, log=_log(quiet))  # type: ignore[arg-type]
    images = loaded.images[:, 0].numpy()
    t0 = time.perf_counter()
    if family == "clean":
        from robustmnist.measure import measure_thickness

        thickness = measure_thickness(images)
        ink = np.ones(len(images))
    else:
        if split != "test":
            raise RobustMnistError("perturbed sets are built from the test split; use --split test")
        pset, _ = load_or_build(images, family, level, MD5["t10k-images-idx3-ubyte"],
                                _cache_dir(data_dir))
        thickness, ink = pset.thickness, pset.ink_ratio
    seconds = time.perf_counter() - t0
    out.print(f"{split} {family} {level:g}: {len(images)} digits, thickness "
              f"{np.nanmean(thickness):.2f} +/- {np.nanstd(thickness):.2f} px (median "
              f"{np.nanmedian(thickness):.2f}), ink ratio {np.nanmean(ink):.2f}, {seconds:.1f}s")
    if reference is not None:
        if not reference.is_file():
            raise RobustMnistError(f"reference {reference} not found; pass t10k-morpho.csv")
        ref = pd.read_csv(reference)["thickness"].to_numpy()
        if len(ref) != len(thickness) or family != "clean" or split != "test":
            raise RobustMnistError("the reference describes the clean test set: use --split test")
        ok = np.isfinite(thickness)
        r = float(np.corrcoef(thickness[ok], ref[ok])[0, 1])
        bias = float(np.mean(thickness[ok] - ref[ok]))
        out.print(f"vs Morpho-MNIST: Pearson r {r:.4f}, mean bias {bias:+.3f} px, "
                  f"mean |diff| {np.mean(np.abs(thickness[ok] - ref[ok])):.3f} px")
    if out_csv is not None:
        frame = pd.DataFrame({"index": np.arange(len(images)), "label": loaded.labels.numpy(),
                              "thickness": thickness, "ink_ratio": ink})
        artifacts.write_text(out_csv, frame.to_csv(index=False))
        out.print(f"wrote {out_csv}")


# --------------------------------------------------------------------------- augment preview

@augment_app.command("preview")
@handles_errors
def augment_preview(
    out_png: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("augment-preview.png"),
    aug: Annotated[str, typer.Option(help="Policy to preview.")] = "thickness",
    aug_range: Annotated[str | None, typer.Option(help="MIN,MAX stroke change, px.")] = None,
    aug_p: Annotated[float | None, typer.Option(help="Probability of no change.")] = None,
    digits: Annotated[int, typer.Option(help="Training digits (rows).")] = 8,
    draws: Annotated[int, typer.Option(help="Random draws per digit (columns).")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the draws.")] = 0,
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Write a PNG grid: the same training digits under several draws of a policy."""
    from robustmnist.augmentation import preview
    from robustmnist.data import load_split
    from robustmnist.plots import digit_grid, save

    config = _aug_config(aug, aug_range, aug_p)
    images = load_split("train", data_dir, log=_log(quiet)).images[:digits]
    grid, deltas = preview(images, config, draws, seed)
    col_labels = ["original"] + [f"draw {i + 1}" for i in range(draws)]
    row_labels = [f"#{i}" for i in range(len(images))]
    fig = digit_grid(grid.numpy(), row_labels, col_labels, f"--aug {aug}: range [{config.delta_min_px:g}, "
                     f"{config.delta_max_px:g}] px, p_untouched {config.p_untouched:g}"
                     f"{', affine' if config.affine else ''}")
    save(fig, out_png)
    out.print(f"wrote {out_png} ({len(images)} digits x {draws} draws; mean |delta| "
              f"{float(abs(deltas).mean()):.2f} px)")


# --------------------------------------------------------------------------- predict

@app.command()
@handles_errors
def predict(
    inputs: Annotated[list[str], typer.Argument(
        help="Checkpoint(s) (.pt or run folders) first, then images: files, folders, globs.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    save_preprocessed: Annotated[Path | None, typer.Option(
        help="Write the 28x28 image each model saw (and a side-by-side view) into this folder.")] = None,
    normalize_thickness: Annotated[float | None, typer.Option(
        help="Redraw the ink at this stroke thickness (px) before predicting.")] = None,
    device: Device = "auto",
) -> None:
    """Recognise digits in your own photos, MNIST-style preprocessed, with one or more models."""
    import cv2
    import numpy as np

    from robustmnist import artifacts
    from robustmnist.predict import ImageError, expand_inputs, load_gray, mnistify, predict_images
    from robustmnist.training import load_checkpoint, model_from_checkpoint, resolve_device

    split = 0
    while split < len(inputs) and (inputs[split].endswith(".pt") or
                                   (Path(inputs[split]) / "checkpoint.pt").is_file()):
        split += 1
    if split == 0:
        raise RobustMnistError("pass at least one checkpoint first: "
                               "robustmnist predict RUN/checkpoint.pt photo.jpg")
    if split == len(inputs):
        raise RobustMnistError("no images given after the checkpoint(s)")
    dev = resolve_device(device)
    ckpts = [load_checkpoint(Path(c)) for c in inputs[:split]]
    models = [(model_from_checkpoint(c, dev), c["config"]["mean"], c["config"]["std"]) for c in ckpts]
    names = [Path(c["path"]).parent.name if Path(c["path"]).name == "checkpoint.pt"
             else Path(c["path"]).stem for c in ckpts]
    paths = expand_inputs(inputs[split:])
    if not paths:
        raise RobustMnistError(f"no images found in {' '.join(inputs[split:])}")
    failed = 0
    table = Table(title="predictions (digit, probability; top-3)")
    table.add_column("image", overflow="fold")
    for name in names:
        table.add_column(name)
    for path in paths:
        try:
            gray = load_gray(path)
            pre = mnistify(gray, normalize_thickness, name=str(path))
        except ImageError as e:
            failed += 1
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            continue
        probs = predict_images(models, pre.image[None], dev)[:, 0]  # (models, 10)
        results: list[dict[str, Any]] = []
        for name, p in zip(names, probs, strict=True):
            top = np.argsort(-p)[:3]
            results.append({"model": name, "digit": int(top[0]), "probability": float(p[top[0]]),
                            "top3": [[int(d), round(float(p[d]), 4)] for d in top]})
        if as_json:
            typer.echo(json.dumps({"image": str(path), "inverted": pre.inverted,
                                   "predictions": results}))  # one JSON object per line
        else:
            table.add_row(path.name, *[f"{r['digit']} ({100 * r['probability']:.1f}%)  " + " ".join(
                f"{d}:{100 * q:.0f}" for d, q in r["top3"]) for r in results])
        if save_preprocessed is not None:
            stem = save_preprocessed / path.stem
            _, png = cv2.imencode(".png", pre.image)
            artifacts.write_bytes(stem.with_suffix(".mnist.png"), png.tobytes())
            view_h = 280
            original = cv2.resize((gray * 255).astype(np.uint8),
                                  (max(1, round(gray.shape[1] * view_h / gray.shape[0])), view_h),
                                  interpolation=cv2.INTER_AREA)
            seen = cv2.resize(pre.image, (view_h, view_h), interpolation=cv2.INTER_NEAREST)
            _, side = cv2.imencode(".png", np.hstack([original, np.full((view_h, 8), 128, np.uint8), seen]))
            artifacts.write_bytes(stem.with_suffix(".side-by-side.png"), side.tobytes())
    if not as_json and table.rows:
        out.print(table)
    if failed:
        err.print(f"{failed} of {len(paths)} images failed")
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
