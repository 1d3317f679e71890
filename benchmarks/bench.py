"""Speed benchmarks, measured in one process (one run) so ratios compare like with like.

1. One training epoch (60,000 images, batch 512, Adam 1e-3, the baseline ConvNet):
   - standard: torchvision ``datasets.MNIST`` + ``ToTensor`` + ``Normalize`` +
     ``DataLoader(batch_size=512, shuffle=True)``, the model in PyTorch's default layout;
   - robustmnist ``--aug none`` and every augmentation policy (the trainer itself, test eval
     excluded), alternated ``--repeats`` times; the overhead of a policy is
     (median policy epoch - median ``none`` epoch) / median policy epoch;
   - the augmentation alone over one epoch's batches, per policy (median of alternating passes
     over the trainer's input path, minus the ``none`` pass);
   - bf16 autocast throughput of the step, for the record.
2. Test sets: build time of every level of every family (cold, a fresh cache), then the sweep
   of one checkpoint over the quickstart's families: cold (fresh cache) and warm (cached).
3. The README's main job (`robustmnist run`, the quickstart) cold: a fresh data folder holding
   only the MNIST files (the one-time fetch is timed separately), in a subprocess.
4. Measuring the thickness of the 10,000 test digits.

Writes ``benchmarks/results/<device>-<date>-<HHMM>.json`` and ``.md``; with ``--readme`` (what
``nox -s bench`` passes) the table also replaces the one between the ``bench:begin``/``bench:end``
markers of the README's "Speed" section.
Usage: ``python benchmarks/bench.py [--device cpu|cuda] [--quick] [--skip main,sweep,...]
[--policies a,b] [--tag NAME] [--readme]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from robustmnist import artifacts
from robustmnist.allocator import keep_freed_memory
from robustmnist.checkpoint import normalise, to_unit
from robustmnist.config import POLICIES, AugConfig, TrainConfig
from robustmnist.data import default_data_dir, fetch, load_split, raw_dir
from robustmnist.evaluation import sweep, test_set
from robustmnist.experiments import load_experiment, resolve_path
from robustmnist.measure import measure_thickness
from robustmnist.models import build_model, resolve_device
from robustmnist.pen import training_atlas
from robustmnist.perturb import DEFAULT_LEVELS
from robustmnist.photobank import training_bank
from robustmnist.training import Progress, stroke_rungs, train, training_batches

RESULTS = Path(__file__).parent / "results"
STEPS = ("epochs", "sets", "sweep", "main", "measure", "bf16")


def standard_epoch(device: torch.device, data_dir: Path, max_batches: int | None) -> tuple[float, int]:
    """(seconds, images) of one epoch of the textbook torchvision pipeline."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    loader = DataLoader(datasets.MNIST(str(data_dir), train=True, download=False, transform=tf),
                        batch_size=512, shuffle=True)
    model = build_model("baseline").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    t0 = time.perf_counter()
    seen = 0
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        loss = F.nll_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
        if max_batches and i + 1 >= max_batches:
            break
    _sync(device)
    return time.perf_counter() - t0, seen


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


#: The studies' variants with their own stroke range (the classic net's recommendation, the
#: dilate4 probe, the photo recommendation's augmentation), measured like the policies, on the
#: baseline net like every row: name -> (policy, AugConfig overrides).
VARIANTS: dict[str, tuple[str, dict[str, float]]] = {
    "fine-pen+erode2+affine": ("fine-pen+thickness+affine", {"delta_min_px": -2.0}),
    "fine-pen+erode2+dilate4+affine": ("fine-pen+thickness+affine",
                                       {"delta_min_px": -2.0, "delta_max_px": 4.0}),
    "fine-pen+erode2+dilate4+refit80+affine": ("fine-pen+thickness+affine",
                                               {"delta_min_px": -2.0, "delta_max_px": 4.0,
                                                "pen_refit": 0.8}),
}


def aug_config(name: str) -> AugConfig:
    """A policy's AugConfig, or a recommended variant's (`VARIANTS`)."""
    if name in VARIANTS:
        policy, overrides = VARIANTS[name]
        return AugConfig.from_policy(policy, **overrides)
    return AugConfig.from_policy(name)


def robustmnist_epoch(policy: str, device: torch.device, out: Path, splits: Any) -> tuple[float, Path]:
    config = TrainConfig(epochs=1, device=str(device), aug=aug_config(policy))
    result = train(config, out / policy, force=True, train_split=splits[0], test_split=splits[1],
                   progress=Progress())
    return result.metrics[0]["epoch_seconds"], out / policy


def rotated(items: list[str], k: int) -> list[str]:
    """`items` rotated left by `k`: repeat r starts with the r-th configuration."""
    k %= len(items)
    return items[k:] + items[:k]


def augmentation_pass(policy: str, device: torch.device, splits: Any, atlas: Any,
                      rungs: Any = None, photos: Any = None) -> float:
    """Seconds of one epoch's batches through the trainer's input path (`training_batches`:
    gather, to [0, 1], `aug_group` batches per augmentation call, the stroke change from the
    run's rung table where the trainer builds one); for ``none`` that path without
    augmentation."""
    config = aug_config(policy)
    generator = torch.Generator(device=device).manual_seed(0)
    perm = torch.randperm(len(splits[0]), device=device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in training_batches(splits[0].images, perm, 512, config, generator,
                              atlas if config.p_pen else None, rungs=rungs,
                              photos=photos if config.p_photo else None):
        pass
    _sync(device)
    return time.perf_counter() - t0


def rung_tables(device: torch.device, splits: Any, policies: list[str]) -> tuple[dict, dict]:
    """The trainer's stroke rung table of each policy (`stroke_rungs`: on the CPU, for policies
    that change strokes), built once per training run as the trainer does, and the seconds
    each build took (not part of an epoch)."""
    tables, seconds, built = {}, {}, {}  # policies with the same stroke range share a table
    images = splits[0].images.to(device)
    for policy in policies:
        config = aug_config(policy)
        key = (config.delta_min_px, config.delta_max_px)
        tables[policy] = None
        if stroke_rungs(images[:1], config) is None:  # the trainer builds none for it
            continue
        if key not in built:
            t0 = time.perf_counter()
            built[key] = stroke_rungs(images, config), time.perf_counter() - t0
        tables[policy], seconds[policy] = built[key]
    return tables, seconds


def augmentation_alone(device: torch.device, splits: Any, atlas: Any,
                       repeats: int, policies: list[str], tables: dict | None = None,
                       photos: Any = None) -> dict[str, float]:
    """Seconds the augmentation adds to one epoch, per policy: median of `repeats` alternating
    passes, minus the median ``none`` pass (the gather and scaling every policy pays)."""
    passes: dict[str, list[float]] = {p: [] for p in policies}
    for r in range(repeats):
        for policy in rotated(policies, r):
            passes[policy].append(augmentation_pass(policy, device, splits, atlas,
                                                    (tables or {}).get(policy), photos))
    base = statistics.median(passes["none"])
    return {p: max(statistics.median(t) - base, 0.0) for p, t in passes.items() if p != "none"}


def bf16_throughput(device: torch.device, splits: Any, steps: int = 20) -> dict[str, float]:
    """images/s of the training step in fp32 and under bf16 autocast (same batches)."""
    out = {}
    images, labels = splits[0].images.to(device), splits[0].labels.to(device)
    for name, enabled in (("fp32", False), ("bf16_autocast", True)):
        torch.manual_seed(0)
        model = build_model("baseline").to(device)
        if device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(i: int, model: Any = model, opt: Any = opt, enabled: bool = enabled) -> None:
            x = normalise(to_unit(images[i * 512:(i + 1) * 512]), 0.1307, 0.3081)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
                loss = F.nll_loss(model(x).float(), labels[i * 512:(i + 1) * 512])
            opt.zero_grad()
            loss.backward()
            opt.step()

        for i in range(3):
            step(i)
        _sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        _sync(device)
        out[name] = steps * 512 / (time.perf_counter() - t0)
    return out


def epochs(results: dict[str, Any], device: torch.device, data_dir: Path, splits: Any,
           tmp: Path, args: argparse.Namespace) -> Path:
    """Standard vs robustmnist epochs, and the overhead of every policy; returns a checkpoint."""
    std_s, std_n = standard_epoch(device, data_dir, 20 if args.quick else None)
    results["standard_epoch_s"] = std_s * 60_000 / std_n
    # Alternate the configurations and compare medians: epoch times on a shared 2-core machine
    # vary by ~10 %, more than the augmentation costs, so one epoch each decides nothing.
    policies = args.policies
    times: dict[str, list[float]] = {p: [] for p in policies}
    ckpt = tmp / "none"
    for r in range(args.repeats):
        for policy in rotated(policies, r):  # no policy always first in its round
            seconds, folder = robustmnist_epoch(policy, device, tmp, splits)
            times[policy].append(seconds)
            ckpt = folder if policy == "none" else ckpt
    med = {p: statistics.median(t) for p, t in times.items()}
    atlas = training_atlas(splits[0].images, data_dir).to(device)
    tables, table_s = rung_tables(device, splits, policies)
    photos = (training_bank(splits[0].images, data_dir).to(device)
              if any(aug_config(p).p_photo for p in policies) else None)
    alone = augmentation_alone(device, splits, atlas, max(5, args.repeats), policies, tables, photos)
    del tables
    results.update({
        "epoch_repeats_s": times, "epoch_median_s": med,
        "robustmnist_epoch_s": med["none"], "ratio_vs_standard": med["none"] / results["standard_epoch_s"],
        "aug_overhead_fraction": {p: (med[p] - med["none"]) / med[p] for p in policies if p != "none"},
        "augmentation_alone_s": alone,
        "augmentation_alone_fraction": {p: alone[p] / med[p] for p in alone},
        "rung_table_build_s": table_s,
    })
    return ckpt


def set_builds(results: dict[str, Any], data_dir: Path, tmp: Path) -> None:
    """Cold build time of every family's default levels (a fresh cache)."""
    test = load_split("test", data_dir)
    cache = tmp / "sets-cache"
    per_family = {}
    for family, levels in {"clean": (0.0,), **DEFAULT_LEVELS}.items():
        t0 = time.perf_counter()
        for level in levels:
            test_set(family, level, data_dir, cache, test=test)
        per_family[family] = {"levels": len(levels), "seconds": time.perf_counter() - t0}
    results["set_build_cold_s"] = per_family


def sweeps(results: dict[str, Any], device: torch.device, data_dir: Path, ckpt: Path, tmp: Path) -> None:
    families = load_experiment(resolve_path("quickstart")).families
    cache = tmp / "sweep-cache"
    for name in ("cold", "warm"):
        t0 = time.perf_counter()
        sweep([ckpt], families, device=device, data_dir=data_dir, cache_dir=cache)
        results[f"sweep_{name}_s"] = time.perf_counter() - t0
    results["sweep_sets"] = 1 + sum(len(v) for v in families.values())


def main_job(results: dict[str, Any], data_dir: Path, tmp: Path) -> None:
    """`robustmnist run` (the quickstart) cold: fresh data folder with only the MNIST files."""
    fresh = tmp / "fresh-data"
    t0 = time.perf_counter()
    shutil.copytree(raw_dir(data_dir), raw_dir(fresh))
    results["main_job_fetch_s"] = time.perf_counter() - t0  # the copy standing in for the fetch
    env = {**os.environ, "ROBUSTMNIST_DATA_DIR": str(fresh), "ROBUSTMNIST_SOURCES": "cache"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "robustmnist.cli", "run", "--out", str(tmp / "main"), "-q"],
                   check=True, env=env, cwd=tmp)
    results["main_job_cold_s"] = time.perf_counter() - t0


def _label(name: str) -> str:
    """How the table names a policy, or a variant by its options."""
    if name not in VARIANTS:
        return f"--aug {name}"
    policy, o = VARIANTS[name]
    c = aug_config(name)
    refit = f" --aug-refit {c.pen_refit:g}" if "pen_refit" in o else ""
    return f"variant {name} (--aug {policy} --aug-range {c.delta_min_px:g},{c.delta_max_px:g}{refit})"


def render(m: dict[str, Any]) -> str:
    lines = [f"Measured {m['date']} on {m['machine']['device_name']} ({m['machine']['device']}, "
             f"{m['machine']['torch_threads']} torch threads, torch {m['machine']['torch']}"
             + ("; freed memory kept for reuse, as the CLI does" if m.get("malloc_kept") else "")
             + ").", "",
             "| measurement | value |", "|---|---|"]
    if "standard_epoch_s" in m:
        lines += [
            f"| standard pipeline epoch (torchvision MNIST + ToTensor + Normalize + DataLoader) | "
            f"{m['standard_epoch_s']:.1f} s |",
            f"| robustmnist epoch, --aug none | {m['robustmnist_epoch_s']:.1f} s "
            f"(**{m['ratio_vs_standard']:.2f}x** the standard) |"]
        rank = {p: i for i, p in enumerate([*POLICIES, *VARIANTS])}  # a JSON file sorts its keys
        for p, frac in sorted(m["aug_overhead_fraction"].items(), key=lambda kv: rank.get(kv[0], len(rank))):
            lines.append(f"| robustmnist epoch, {_label(p)} | {m['epoch_median_s'][p]:.1f} s (epoch "
                         f"difference {100 * frac:+.1f} %; augmentation alone "
                         f"{m['augmentation_alone_s'][p]:.2f} s = "
                         f"**{100 * m['augmentation_alone_fraction'][p]:.1f} %** of the epoch) |")
    if m.get("rung_table_build_s"):
        builds = m["rung_table_build_s"]
        lines.append(f"| stroke rung table of the 60,000 training digits, built once per training run "
                     f"(CPU) | {min(builds.values()):.2f}-{max(builds.values()):.2f} s |")
    if "step_images_per_s" in m:
        lines.append(f"| training step fp32 / bf16 autocast | {m['step_images_per_s']['fp32']:,.0f} / "
                     f"{m['step_images_per_s']['bf16_autocast']:,.0f} images/s |")
    if "measure_10k_s" in m:
        lines.append(f"| measure thickness of 10,000 test digits | {m['measure_10k_s']:.1f} s |")
    for family, b in m.get("set_build_cold_s", {}).items():
        levels = f"{b['levels']} level{'s' * (b['levels'] != 1)}"
        lines.append(f"| build {family} ({levels} x 10,000 digits), cold | {b['seconds']:.1f} s |")
    if "sweep_cold_s" in m:
        lines.append(f"| quickstart sweep ({m['sweep_sets']} sets), 1 checkpoint: cold / warm | "
                     f"{m['sweep_cold_s']:.1f} s / {m['sweep_warm_s']:.1f} s |")
    if "main_job_cold_s" in m:
        lines.append(f"| main job `robustmnist run`, cold (MNIST already fetched) | "
                     f"{m['main_job_cold_s']:.0f} s ({m['main_job_cold_s'] / 60:.2f} min) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer batches (smoke test only; "
                        "leaves out the photo policies, whose first run photographs the 60,000 "
                        "training digits, ~8 min on 2 cores)")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to skip: {','.join(STEPS)}")
    parser.add_argument("--repeats", type=int, default=5, help="epochs per configuration")
    parser.add_argument("--policies", default=",".join([*POLICIES, *VARIANTS]),
                        help="comma-separated policies (or recommended variants: "
                             f"{', '.join(VARIANTS)}) for the epoch step (none is always added)")
    parser.add_argument("--tag", default="", help="suffix of the result files' names")
    parser.add_argument("--readme", action="store_true",
                        help="also write the table into README.md's Speed section")
    parser.add_argument("--render", metavar="JSON", type=Path,
                        help="only render a recorded run's table again (its .md; with --readme "
                             "also the README's): after a change to the table's format")
    args = parser.parse_args()
    if args.render is not None:
        import json

        recorded = json.loads(args.render.read_text())
        text = render(recorded)
        artifacts.write_text(args.render.with_suffix(".md"), text)
        if args.readme:
            readme = Path(__file__).parent.parent / "README.md"
            artifacts.write_text(readme, replace_between(readme.read_text(), text, args.render.name))
        print(text)
        return
    skip = {s for s in args.skip.split(",") if s}
    chosen = [p for p in args.policies.split(",") if p]
    known = [*POLICIES, *VARIANTS]
    if unknown := [p for p in chosen if p not in known]:
        parser.error(f"unknown policy {unknown[0]!r}; choose from {', '.join(known)}")
    args.policies = ["none", *[p for p in known if p in chosen and p != "none"
                               and not (args.quick and aug_config(p).p_photo)]]
    partial = skip or args.quick or len(args.policies) < len(known)
    if args.readme and partial:
        parser.error("--readme writes the README's table: only from a full run "
                     "(no --quick/--skip/--policies)")
    device = resolve_device(args.device)
    kept = keep_freed_memory()  # what every robustmnist command does (allocator.py)
    data_dir = default_data_dir()
    t0 = time.perf_counter()
    fetch(data_dir)
    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "fetch_or_verify_s": time.perf_counter() - t0, "malloc_kept": kept,
                               **artifacts.provenance(device)}
    splits = (load_split("train", data_dir, device), load_split("test", data_dir, device))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt = None
        if "epochs" not in skip:
            ckpt = epochs(results, device, data_dir, splits, tmp, args)
        if "bf16" not in skip:
            results["step_images_per_s"] = bf16_throughput(device, splits)
        if "measure" not in skip:
            t1 = time.perf_counter()
            measure_thickness(splits[1].images.cpu().numpy())
            results["measure_10k_s"] = time.perf_counter() - t1
        if "sets" not in skip:
            set_builds(results, data_dir, tmp)
        if "sweep" not in skip:
            if ckpt is None:
                ckpt = robustmnist_epoch("none", device, tmp, splits)[1]
            sweeps(results, device, data_dir, ckpt, tmp)
        if "main" not in skip:
            main_job(results, data_dir, tmp)
    RESULTS.mkdir(exist_ok=True)
    tag = ("-quick" if args.quick else "") + (f"-{args.tag}" if args.tag else "")
    # date and time: a second run on the same day does not replace the first one's record
    stamp = f"{results['date'][:10]}-{results['date'][11:13]}{results['date'][14:16]}"
    path = RESULTS / f"{device.type}-{stamp}{tag}.json"
    artifacts.write_json(path, results)
    text = render(results)
    artifacts.write_text(path.with_suffix(".md"), text)
    print(text)
    print(f"written to {path} and {path.with_suffix('.md')}")
    if args.readme:
        readme = Path(__file__).parent.parent / "README.md"
        artifacts.write_text(readme, replace_between(readme.read_text(), text, path.name))
        print(f"and into {readme}")


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def replace_between(document: str, table: str, source: str) -> str:
    """`document` with the text between the bench markers replaced by `table`."""
    if document.count(BEGIN) != 1 or document.count(END) != 1:
        raise SystemExit(f"README.md needs exactly one {BEGIN} and one {END} line")
    head, rest = document.split(BEGIN)
    _, tail = rest.split(END)
    note = f"<!-- generated by benchmarks/bench.py from benchmarks/results/{source} -->"
    return f"{head}{BEGIN}\n{note}\n{table}{END}{tail}"


if __name__ == "__main__":
    main()
