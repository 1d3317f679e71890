"""The `robustmnist` command line: thin typer wrappers that parse, call one library function
and render its result. Only this module prints and chooses default paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from robustmnist import RobustMnistError, __version__
from robustmnist.config import MAX_SEED, POLICIES, aug_from_options
from robustmnist.console import (
    RichProgress,
    err,
    fail,
    handles_errors,
    logger,
    out,
    plural,
    prediction_table,
    sweep_table,
)
from robustmnist.models import MODELS

#: What a file that robustmnist may replace begins with: a PNG it drew, a CSV `measure` wrote.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MEASURE_HEADER = b"index,label,thickness,ink_ratio"

app = typer.Typer(help="Train MNIST ConvNets with stroke-thickness augmentation, test them on "
                  "thin and thick pens, write reports, read your own digit photos.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Fetch, verify and export MNIST.", no_args_is_help=True)
augment_app = typer.Typer(help="Look at augmentation policies.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(augment_app, name="augment")

DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="MNIST folder/cache (torchvision layout). Default: $ROBUSTMNIST_DATA_DIR "
    "or ~/.cache/robustmnist.", show_default=False)]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, only results.")]
Family = Annotated[str, typer.Option(help="clean | delta | absolute | ladder | photo (the perturbed ones: "
                                          "test split only)")]
Level = Annotated[float, typer.Option(help="Level of the family: px (photo: the pen's width over the "
                                         "digit's height, 0.01-0.35).")]


def _version(value: bool) -> None:
    if value:
        out.print(f"robustmnist {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version,
                                               is_eager=True, help="Show the version.")] = False,
         ) -> None:
    """robustmnist: stroke-thickness robustness of MNIST classifiers."""


def _floats(option: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise RobustMnistError(f"{option} {text!r}: expected numbers like -1,0.5,2") from None


# --------------------------------------------------------------------------- data

@data_app.command("fetch")
@handles_errors
def data_fetch(data_dir: DataDir = None, quiet: Quiet = False) -> None:
    """Get the four MNIST files (verified by MD5) into the cache; instant once cached."""
    from robustmnist.data import fetch

    out.print(f"MNIST ready (MD5 verified) in {fetch(data_dir, log=logger(quiet))}")


@data_app.command("export")
@handles_errors
def data_export(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write PNGs + labels.csv into.")],
    split: Annotated[str, typer.Option(help="train | test")] = "test",
    family: Family = "clean", level: Level = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier export.")] = False,
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Write a split, or a thickness-perturbed test set, as PNG files plus labels.csv."""
    import torch

    from robustmnist.data import export_images, load_split
    from robustmnist.evaluation import test_set

    if family != "clean" and split != "test":
        raise RobustMnistError("perturbed sets are built from the test split; use --split test")
    loaded = load_split(split, data_dir, log=logger(quiet))  # type: ignore[arg-type]
    images = loaded.images
    if family != "clean":
        images = torch.from_numpy(test_set(family, level, data_dir, test=loaded)[0].images).unsqueeze(1)
    count = export_images(images, loaded.labels, out_dir, force=force)
    out.print(f"wrote {count} PNGs and labels.csv to {out_dir}")


# --------------------------------------------------------------------------- train

@app.command()
@handles_errors
def train(
    aug: Annotated[str, typer.Option(help=f"Augmentation policy: {' | '.join(POLICIES)}.")] = "none",
    aug_range: Annotated[str | None, typer.Option(
        help="Stroke change range MIN,MAX in px of width at 28x28 (<0 thins), within -2,4 "
             "(+3, +4: the 4x4, 5x5 dilations). "
             "Default: the policy's (thickness -1,2; thin -1,0; thick 0,2).")] = None,
    aug_p: Annotated[float | None, typer.Option(
        help="Probability that an image not redrawn by a pen keeps its original strokes "
             "(default 0.2; pen redraws have their own share, p_pen).")] = None,
    aug_refit: Annotated[float | None, typer.Option(
        help="Share of pen-redrawn digits re-fitted into their original's box, as predict "
             "size-normalises a photo (pen policies; default: the policy's, 0.5 for refit-pen "
             "and fine-pen, else 0).")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the 60,000 training images.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per Adam step.")] = 512,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    lr_schedule: Annotated[str, typer.Option(
        help="constant (the classic recipe) | cosine (lr decayed along a half cosine "
             "towards 0).")] = "constant",
    seed: Annotated[int, typer.Option(help="Seed for init, batch order, augmentation.")] = 0,
    model: Annotated[str, typer.Option(
        help=f"Model: {' | '.join(MODELS)} (wide: the baseline ConvNet with twice the channels, "
             "wide3: three times).")] = "baseline",
    device: Device = "auto",
    run_dir: Annotated[Path | None, typer.Option(
        "--out", help="Run folder. Default: runs/<aug>[+<model>][+<lr-schedule>]-seed<seed> "
        "(model and schedule where not baseline, constant).", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an unfinished run.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over in an existing run folder.")] = False,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads, and processes building the pen atlas (default: all cores).")] = None,
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Train a model (classic recipe by default) into a run folder; resumable."""
    from robustmnist.config import TrainConfig, from_table
    from robustmnist.models import resolve_device, set_threads
    from robustmnist.training import default_variant
    from robustmnist.training import train as train_fn

    config = from_table(TrainConfig, {"model": model, "epochs": epochs, "batch_size": batch_size,
                                      "lr": lr, "lr_schedule": lr_schedule, "seed": seed,
                                      "device": device},
                        "--", aug=aug_from_options(aug, aug_range, aug_p, aug_refit))
    set_threads(threads)
    run_dir = run_dir or Path("runs") / f"{default_variant(config)}-seed{seed}"
    if resume and not run_dir.exists():  # a mistyped folder would start a new run silently
        raise RobustMnistError(f"--resume: {run_dir} does not exist, so there is no run to "
                               "continue; check the path (or --out), or drop --resume to start one")
    logger(quiet)(f"training {model} with aug={aug} on {resolve_device(device)} -> {run_dir}")
    result = train_fn(config, run_dir, resume=resume, force=force, data_dir=data_dir,
                      progress=None if quiet else RichProgress(epochs), log=logger(quiet))  # type: ignore[arg-type]
    final = result.metrics[-1] if result.metrics else {}
    out.print(f"{run_dir}: test accuracy {100 * final.get('test_accuracy', float('nan')):.2f}% "
              f"after {plural(len(result.metrics), 'epoch')}"
              + (f" ({result.seconds:.0f}s)" if result.seconds else " (already complete)"))


# --------------------------------------------------------------------------- eval

@app.command("eval")
@handles_errors
def eval_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(help="checkpoint.pt files or run folders.")],
    sweep_width: Annotated[bool, typer.Option("--sweep-width", help="Also evaluate on the "
                                              "thickness-perturbed test sets.")] = False,
    family: Annotated[list[str] | None, typer.Option(help="delta, absolute, ladder and/or photo "
                                                     "(repeatable). Default: delta and absolute.")] = None,
    levels: Annotated[str | None, typer.Option(help="Comma-separated levels in px (default: the "
                                               "family's defaults).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write sweep.csv, predictions.npz "
                                                 "and sweep.json here.")] = None,
    device: Device = "auto", data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Clean test accuracy and loss per checkpoint; with --sweep-width, every thickness level."""
    from robustmnist.analysis import corruption_errors
    from robustmnist.evaluation import erased_warnings, parse_levels, save_sweep, sweep
    from robustmnist.models import resolve_device

    if (family or levels) and not sweep_width:
        raise RobustMnistError("--family/--levels choose sweep levels; add --sweep-width")
    level_list = _floats("--levels", levels) if levels is not None else None  # '' is refused
    families = parse_levels(family or ["delta", "absolute"], level_list) if sweep_width else {}
    if out_dir is not None:  # before the sweep: a refused folder must not cost its minutes
        from robustmnist import artifacts

        artifacts.claim_dir(out_dir, "sweep folder")
    result = sweep(checkpoints, families, device=resolve_device(device), data_dir=data_dir,
                   log=logger(quiet))
    frame = result.frame()
    out.print(sweep_table(frame, bool(families)))
    for warning in erased_warnings(frame):
        err.print(f"warning: {warning}", highlight=False)
    if not families:
        for _, r in frame.iterrows():
            out.print(f"{r['run']}: accuracy {100 * r['accuracy']:.2f}%  nll {r['nll']:.4f}")
    if "delta" in families and (ce := corruption_errors(frame))["ce"].notna().any():
        out.print(ce[["run", "variant", "seed", "ce", "relative_ce"]].round(1).to_string(index=False))
    if out_dir is not None:
        out.print(f"wrote {save_sweep(result, out_dir).csv} ({len(frame)} rows)")


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
    executor: Annotated[str, typer.Option(help="Where runs execute: local | ray (pip install "
                                          "-e \".[ray]\").")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster: auto (the running one) or "
                       "HOST:PORT. Default: a Ray instance on this machine.",
                       show_default=False)] = None,
    cpus_per_run: Annotated[float | None, typer.Option(help="Ray: CPUs per task (its torch "
                            "threads). Default 1.", show_default=False)] = None,
    gpus_per_run: Annotated[float | None, typer.Option(help="Ray: GPUs per task; fractions "
                            "share a GPU (0.25 = four runs per GPU). Default 0.",
                            show_default=False)] = None,
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Train every (variant, seed) not yet complete, sweep all checkpoints, write the report."""
    from robustmnist.executors import make_executor
    from robustmnist.experiments import load_experiment, resolve_path, run_experiment

    log = logger(quiet)
    if experiment is not None and not experiment.strip():
        raise RobustMnistError("experiment '': empty; pass a TOML file or a built-in name "
                               "(quickstart, thickness), or nothing for the quickstart")
    exp = load_experiment(resolve_path(experiment), output)
    runner = make_executor(executor, jobs, address, cpus_per_run, gpus_per_run, log)
    outcome = run_experiment(exp, runner, data_dir=data_dir, log=log)
    out.print(f"{exp.name}: {outcome.total} runs complete; report in {outcome.report} "
              f"({outcome.seconds:.0f}s this time)")


@app.command()
@handles_errors
def report(
    results: Annotated[list[Path], typer.Argument(help="Sweep folders (with sweep.csv) or "
                                                  "sweep.csv files.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report folder. Default: "
                                                 "reports/<name>.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option(help="Report name (default: the experiment's).")] = None,
    compare: Annotated[list[str] | None, typer.Option(
        help="A,B: compare variant A with B at every level (repeatable; default: the "
        "experiment file's `compare` pairs, skipping any these results lack).",
        show_default=False)] = None,
) -> None:
    """Write the comparison report (README.md, CSV tables, plots) from result files only."""
    from robustmnist.analysis import experiment_record
    from robustmnist.reports import write_report

    exp_name, question, recorded = experiment_record(results)
    pairs: list[tuple[str, str]] = []
    for spec in compare or []:
        a, sep, b = spec.partition(",")
        if not sep or not a.strip() or not b.strip() or "," in b or a.strip() == b.strip():
            raise RobustMnistError(f"--compare {spec!r}: expected two different variant "
                                   "names A,B (e.g. --compare thickness,none)")
        pair = (a.strip(), b.strip())
        if pair in pairs or pair[::-1] in pairs:
            raise RobustMnistError(f"--compare {spec!r}: that pair is given twice; give it once")
        pairs.append(pair)
    name = name or exp_name
    path = write_report(results, out_dir or Path("reports") / name, title=name, question=question,
                        compare=pairs, recorded_compare=[] if compare else recorded)
    out.print(f"wrote report {path}")


# --------------------------------------------------------------------------- measure

@app.command()
@handles_errors
def measure(
    split: Annotated[str, typer.Option(help="train | test")] = "test",
    family: Family = "clean", level: Level = 0.0,
    reference: Annotated[Path | None, typer.Option(help="Morpho-MNIST t10k-morpho.csv to "
                                                   "compare with (clean test set).")] = None,
    out_csv: Annotated[Path | None, typer.Option("--out", help="Per-digit CSV to write.")] = None,
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Measure stroke thickness (Morpho-MNIST definition) and ink ratio of a set."""
    import numpy as np
    import pandas as pd

    from robustmnist import artifacts
    from robustmnist.evaluation import measure_set
    from robustmnist.measure import compare_to_reference

    if reference is not None and (family != "clean" or split != "test"):
        raise RobustMnistError("the reference describes the clean test set: use --split test "
                               "--family clean")
    if reference is not None and not reference.is_file():
        raise RobustMnistError(f"--reference {reference}: no such file; give Morpho-MNIST's "
                               "t10k-morpho.csv")
    if out_csv is not None:  # before the work: a user's file is never replaced
        artifacts.check_replaceable(out_csv, MEASURE_HEADER, "thickness CSV")
    m = measure_set(split, family, level, data_dir, logger(quiet))
    t = m.thickness
    out.print(f"{split} {family} {level:g}: {plural(len(t), 'digit')}, thickness "
              f"{np.nanmean(t):.2f} +/- "
              f"{np.nanstd(t):.2f} px (median {np.nanmedian(t):.2f}), ink ratio "
              f"{np.nanmean(m.ink_ratio):.2f}, {m.seconds:.1f}s")
    if reference is not None:
        c = compare_to_reference(t, reference)
        out.print(f"vs Morpho-MNIST: Pearson r {c['pearson_r']:.4f}, mean bias {c['bias']:+.3f} px, "
                  f"mean |diff| {c['mean_abs_diff']:.3f} px")
    if out_csv is not None:
        artifacts.write_text(out_csv, pd.DataFrame({"index": np.arange(len(t)), "label": m.labels,
                                                    "thickness": t, "ink_ratio": m.ink_ratio}
                                                   ).to_csv(index=False))
        out.print(f"wrote {out_csv}")


# --------------------------------------------------------------------------- augment preview

@augment_app.command("preview")
@handles_errors
def augment_preview(
    out_png: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("augment-preview.png"),
    aug: Annotated[str, typer.Option(help="Policy to preview.")] = "thickness",
    aug_range: Annotated[str | None, typer.Option(help="MIN,MAX stroke change, px.")] = None,
    aug_p: Annotated[float | None, typer.Option(
        help="Probability that a digit not redrawn by a pen keeps its strokes.")] = None,
    aug_refit: Annotated[float | None, typer.Option(
        help="Share of pen-redrawn digits re-fitted into their original's box.")] = None,
    digits: Annotated[int, typer.Option(help="Training digits (rows), 1-64.")] = 8,
    draws: Annotated[int, typer.Option(help="Random draws per digit (columns), 1-32.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the draws.")] = 0,
    data_dir: DataDir = None, quiet: Quiet = False,
) -> None:
    """Write a PNG grid: the same training digits under several draws of a policy."""
    from robustmnist import artifacts
    from robustmnist.data import load_split
    from robustmnist.plots import PNG_MARK, preview_figure, save

    if not (1 <= digits <= 64 and 1 <= draws <= 32):
        raise RobustMnistError(f"--digits {digits} / --draws {draws}: choose 1-64 digits and 1-32 draws")
    if not 0 <= seed <= MAX_SEED:
        raise RobustMnistError(f"--seed {seed}: choose a seed in [0, {MAX_SEED}]")
    if out_png.suffix.lower() != ".png" and not out_png.is_dir():
        raise RobustMnistError(f"--out {out_png}: the preview is a PNG image; name a .png file")
    artifacts.check_replaceable(out_png, PNG_SIGNATURE, "PNG", PNG_MARK)  # only a preview of ours
    config = aug_from_options(aug, aug_range, aug_p, aug_refit)
    images = load_split("train", data_dir, log=logger(quiet)).images[:digits]
    fig, deltas = preview_figure(images, config, draws, seed)
    save(fig, out_png)
    out.print(f"wrote {out_png} ({plural(len(images), 'digit')} x {plural(draws, 'draw')}; "
              "mean |stroke change| "
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
    from robustmnist.models import resolve_device
    from robustmnist.predict import predict_files, split_inputs

    checkpoints, specs = split_inputs(inputs)
    table, failed, total = prediction_table([c.parent.name if c.name == "checkpoint.pt" or c.is_dir()
                                              else c.stem for c in checkpoints]), 0, 0
    for result in predict_files(checkpoints, specs, device=resolve_device(device),
                                normalize_thickness=normalize_thickness, save_dir=save_preprocessed):
        total += 1
        if result.error:
            failed += 1
            fail(result.error)
        elif as_json and result.preprocessed is not None:
            typer.echo(json.dumps({"image": str(result.path), "inverted": result.preprocessed.inverted,
                                   "predictions": [p.__dict__ for p in result.predictions]}))
        else:
            table.add_row(result.path.name, *[f"{p.digit} ({100 * p.probability:.1f}%)  " + " ".join(
                f"{d}:{100 * q:.0f}" for d, q in p.top3) for p in result.predictions])
    if not as_json and table.rows:
        out.print(table)
    if failed:
        err.print(f"{failed} of {total} images failed")
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
