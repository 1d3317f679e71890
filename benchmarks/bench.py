"""Speed benchmarks, measured in one process so ratios compare like with like.

1. One training epoch (60,000 images, batch 512, Adam 1e-3, the baseline ConvNet):
   - standard: torchvision ``datasets.MNIST`` + ``ToTensor`` + ``Normalize`` +
     ``DataLoader(batch_size=512, shuffle=True)``, the model in PyTorch's default layout;
   - robustmnist ``--aug none`` and ``--aug thickness`` (the trainer itself, test eval excluded),
     alternated ``--repeats`` times, median epoch of each compared;
   - bf16 autocast throughput of the robustmnist step (AMX), for the record.
2. The default sweep (delta + absolute families) of one checkpoint: cold (building the cached
   sets) and warm (cached).
3. Measuring the thickness of the 10,000 test digits.

Writes ``benchmarks/results/<device>-<date>.json`` and prints a Markdown summary.
Usage: ``python benchmarks/bench.py [--device cpu|cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustmnist import artifacts
from robustmnist.augmentation import AugConfig
from robustmnist.data import default_data_dir, fetch, load_split
from robustmnist.evaluation import parse_levels, sweep
from robustmnist.measure import measure_thickness
from robustmnist.models import build_model
from robustmnist.training import Progress, TrainConfig, normalise, resolve_device, to_unit, train

RESULTS = Path(__file__).parent / "results"


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
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, seen


def robustmnist_epoch(policy: str, device: torch.device, out: Path, splits) -> tuple[float, Path]:
    config = TrainConfig(epochs=1, device=str(device), aug=AugConfig.from_policy(policy))
    result = train(config, out / policy, force=True, train_split=splits[0], test_split=splits[1],
                   progress=Progress())
    return result.metrics[0]["epoch_seconds"], out / policy


def augmentation_alone(device: torch.device, splits) -> float:
    """Seconds of `augment` alone over one epoch's batches (the thickness policy)."""
    from robustmnist.augmentation import augment

    config = AugConfig.from_policy("thickness")
    generator = torch.Generator(device=device).manual_seed(0)
    perm = torch.randperm(len(splits[0]), device=device)
    images = splits[0].images
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(perm), 512):
        augment(to_unit(images[perm[i:i + 512]]), config, generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bf16_throughput(device: torch.device, splits, steps: int = 20) -> dict[str, float]:
    """images/s of the training step in fp32 and under bf16 autocast (same batches)."""
    out = {}
    images, labels = splits[0].images.to(device), splits[0].labels.to(device)
    for name, enabled in (("fp32", False), ("bf16_autocast", True)):
        torch.manual_seed(0)
        model = build_model("baseline").to(device)
        if device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(i: int, model=model, opt=opt, enabled=enabled) -> None:
            x = normalise(to_unit(images[i * 512:(i + 1) * 512]), 0.1307, 0.3081)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
                loss = F.nll_loss(model(x).float(), labels[i * 512:(i + 1) * 512])
            opt.zero_grad()
            loss.backward()
            opt.step()

        for i in range(3):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = steps * 512 / (time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer batches (smoke test only)")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="epochs per robustmnist config")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data_dir = default_data_dir()
    fetch(data_dir)
    splits = (load_split("train", data_dir, device), load_split("test", data_dir, device))
    results: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     **artifacts.provenance(device)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        std_s, std_n = standard_epoch(device, data_dir, 20 if args.quick else None)
        results["standard_epoch_s"] = std_s * 60_000 / std_n
        # Alternate the two configurations and compare medians: epoch times on a shared 2-core
        # machine vary by ~10 %, more than the augmentation costs, so one epoch each decides
        # nothing.
        none_times, aug_times = [], []
        for _ in range(args.repeats):
            seconds, ckpt = robustmnist_epoch("none", device, tmp_path, splits)
            none_times.append(seconds)
            aug_times.append(robustmnist_epoch("thickness", device, tmp_path, splits)[0])
        none_s, aug_s = statistics.median(none_times), statistics.median(aug_times)
        results["epoch_repeats_s"] = {"none": none_times, "thickness": aug_times}
        results.update({"robustmnist_epoch_s": none_s, "robustmnist_thickness_epoch_s": aug_s,
                        "ratio_vs_standard": none_s / results["standard_epoch_s"],
                        "aug_overhead_fraction": (aug_s - none_s) / aug_s})
        results["augmentation_alone_s"] = augmentation_alone(device, splits)
        results["step_images_per_s"] = bf16_throughput(device, splits)
        t0 = time.perf_counter()
        measure_thickness(splits[1].images.cpu().numpy())
        results["measure_10k_s"] = time.perf_counter() - t0
        if not args.no_sweep:
            families = parse_levels(["delta", "absolute"], None)
            cache = tmp_path / "cache"
            t0 = time.perf_counter()
            sweep([ckpt], families, device=device, data_dir=data_dir, cache_dir=cache)
            results["sweep_cold_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            sweep([ckpt], families, device=device, data_dir=data_dir, cache_dir=cache)
            results["sweep_warm_s"] = time.perf_counter() - t0
    RESULTS.mkdir(exist_ok=True)
    stamp = results["date"][:10]
    path = RESULTS / f"{device.type}-{stamp}{'-quick' if args.quick else ''}.json"
    artifacts.write_json(path, results)
    m = results
    lines = [
        f"Measured {m['date']} on {m['machine']['device_name']} ({m['machine']['device']}, "
        f"{m['machine']['torch_threads']} torch threads, torch {m['machine']['torch']}).",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| standard pipeline epoch (torchvision MNIST + ToTensor + Normalize + DataLoader) | "
        f"{m['standard_epoch_s']:.1f} s |",
        f"| robustmnist epoch, --aug none | {m['robustmnist_epoch_s']:.1f} s "
        f"(**{m['ratio_vs_standard']:.2f}x** the standard) |",
        f"| robustmnist epoch, --aug thickness | {m['robustmnist_thickness_epoch_s']:.1f} s "
        f"(augmentation = **{100 * m['aug_overhead_fraction']:.1f} %** of the epoch) |",
        f"| augmentation alone over one epoch's batches (thickness) | "
        f"{m['augmentation_alone_s']:.2f} s (= "
        f"{100 * m['augmentation_alone_s'] / m['robustmnist_thickness_epoch_s']:.1f} % "
        "of the augmented epoch) |",
        f"| training step fp32 / bf16 autocast | {m['step_images_per_s']['fp32']:,.0f} / "
        f"{m['step_images_per_s']['bf16_autocast']:,.0f} images/s |",
        f"| measure thickness of 10,000 test digits | {m['measure_10k_s']:.1f} s |",
    ]
    if "sweep_cold_s" in m:
        lines.append(f"| default sweep (delta + absolute, 17 sets), 1 checkpoint: cold / warm | "
                     f"{m['sweep_cold_s']:.1f} s / {m['sweep_warm_s']:.1f} s |")
    text = "\n".join(lines) + "\n"
    artifacts.write_text(path.with_suffix(".md"), text)
    print(text)
    print(f"written to {path} and {path.with_suffix('.md')}")

if __name__ == "__main__":
    main()
