"""The trainer: MNIST on the device, randperm batches, on-device augmentation, atomic
checkpoints every epoch, exact resume.

A run directory holds:

* ``config.json``   the resolved TrainConfig plus provenance (version, git revision, machine);
* ``metrics.csv``   one row per finished epoch (train loss/accuracy, test loss/accuracy,
                    epoch seconds, images/s);
* ``checkpoint.pt`` state_dict, optimizer state and metadata, rewritten atomically after
                    every epoch; ``complete`` is true once all epochs are done.

Randomness is derived per epoch from (seed, epoch), so a resumed run draws exactly what the
uninterrupted run would have drawn.
"""

from __future__ import annotations

import csv
import io
import pickle
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustmnist import RobustMnistError, __version__, artifacts
from robustmnist.augmentation import AugConfig, augment
from robustmnist.data import MnistSplit, load_split
from robustmnist.models import MODELS, build_model

CHECKPOINT_FORMAT = "robustmnist-checkpoint-v1"
METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                  "epoch_seconds", "images_per_second"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result (the classic recipe by default)."""

    model: str = "baseline"       # key of models.MODELS
    epochs: int = 20              # passes over the 60,000 training images
    batch_size: int = 512         # images per Adam step
    lr: float = 1e-3              # Adam learning rate
    seed: int = 0                 # model init, batch order and augmentation draws
    device: str = "auto"          # auto | cpu | cuda | cuda:N (auto = cuda if available)
    mean: float = 0.1307          # normalisation mean of MNIST pixels in [0, 1]
    std: float = 0.3081           # normalisation std
    aug: AugConfig = field(default_factory=AugConfig)

    def validate(self) -> TrainConfig:
        if self.model not in MODELS:
            raise RobustMnistError(f"unknown model {self.model!r}; known: {', '.join(MODELS)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise RobustMnistError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise RobustMnistError(f"lr must be > 0, got {self.lr}")
        if not self.std > 0:
            raise RobustMnistError(f"std must be > 0, got {self.std}")
        resolve_device(self.device)
        self.aug.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise RobustMnistError(f"unknown training option(s) {sorted(unknown)}")
        aug = AugConfig(**d.get("aug", {}))
        return cls(**{**d, "aug": aug})

    def result_fields(self) -> dict[str, Any]:
        """The fields that change the trained weights (device excluded: it only picks hardware)."""
        d = self.to_dict()
        d.pop("device")
        return d


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a clear error for a device that is not there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise RobustMnistError(f"unknown device {device!r}; use auto, cpu or cuda") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RobustMnistError(f"device {device!r} asked for but CUDA is not available; "
                               "use --device cpu (or auto)")
    if resolved.type not in ("cpu", "cuda"):
        raise RobustMnistError(f"device {device!r} is not supported; use auto, cpu or cuda")
    return resolved


def epoch_generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator for one (seed, epoch, stream): resume replays exactly what was drawn."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch) * 8 + stream)
    return g


def normalise(x01: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (x01 - mean) / std


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, 28, 28) -> float32 in [0, 1], channels_last (faster convs on CPU)."""
    return (images_u8.float() / 255.0).contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    config: TrainConfig, epoch: int, meta: dict[str, Any]) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": config.model,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "complete": epoch >= config.epochs,
        "config": config.to_dict(),
        "meta": meta,
    }
    artifacts.torch_save(path, payload)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; clear errors for anything else."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise RobustMnistError(f"checkpoint {path} not found; pass a checkpoint.pt or run dir")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise RobustMnistError(f"{path} holds objects other than weights; refusing to load "
                                   "it (only robustmnist checkpoints are accepted)") from err
        raise RobustMnistError(f"{path} is corrupt or not a checkpoint (unreadable pickle); "
                               "retrain or restore it") from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise RobustMnistError(f"{path} is corrupt or not a checkpoint ({type(err).__name__}); "
                               "retrain or restore it") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RobustMnistError(f"{path} is not a robustmnist checkpoint "
                               f"(expected format {CHECKPOINT_FORMAT})")
    if ckpt.get("model") not in MODELS:
        raise RobustMnistError(f"{path}: unknown model {ckpt.get('model')!r}; "
                               f"this robustmnist knows {', '.join(MODELS)}")
    ckpt["path"] = str(path)
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    model = build_model(ckpt["model"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[1:2] or [str(err)]
        raise RobustMnistError(f"{ckpt.get('path', 'checkpoint')}: weights do not fit model "
                               f"{ckpt['model']!r} ({first[0].strip()})") from err
    model.to(device).eval()
    if torch.device(device).type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


# --------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    run_dir: Path
    metrics: list[dict[str, float]]
    complete: bool
    seconds: float


class Progress:
    """Callbacks the trainer calls; the CLI renders them, tests ignore them."""

    def start(self, epoch: int, steps: int) -> None: ...
    def step(self, loss: float, accuracy: float, images_per_second: float) -> None: ...
    def end(self, row: dict[str, float]) -> None: ...


@torch.inference_mode()
def evaluate_split(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: float,
                   std: float, batch_size: int = 2000) -> tuple[float, float, torch.Tensor]:
    """(mean NLL, accuracy, predictions) of `model` on uint8 images; model in eval mode."""
    model.eval()
    total_loss = torch.zeros((), device=images.device)
    preds = []
    for i in range(0, len(images), batch_size):
        logp = model(normalise(to_unit(images[i:i + batch_size]), mean, std))
        total_loss += F.nll_loss(logp.float(), labels[i:i + batch_size], reduction="sum")
        preds.append(logp.argmax(1))
    pred = torch.cat(preds)
    accuracy = (pred == labels).sum().item() / len(labels)
    return total_loss.item() / len(images), accuracy, pred


def _read_metrics(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (int(row[k]) if k == "epoch" else row[k]) for k in METRIC_COLUMNS})
    artifacts.write_text(path, buf.getvalue())


def run_state(run_dir: Path, config: TrainConfig) -> str:
    """'new', 'partial' or 'complete' for `config` in `run_dir`; error if it holds another run."""
    ckpt_path = Path(run_dir) / "checkpoint.pt"
    if not ckpt_path.exists():
        return "new"
    ckpt = load_checkpoint(ckpt_path)
    saved = TrainConfig.from_dict(ckpt["config"])
    if saved.result_fields() != config.result_fields():
        diff = sorted(k for k, v in config.result_fields().items()
                      if saved.result_fields().get(k) != v)
        raise RobustMnistError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); "
                               "choose another --out or pass --force to start over")
    return "complete" if ckpt["complete"] else "partial"


def train(config: TrainConfig, run_dir: Path, *, resume: bool = False, force: bool = False,
          data_dir: Path | None = None, train_split: MnistSplit | None = None,
          test_split: MnistSplit | None = None, progress: Progress | None = None,
          variant: str | None = None, log: Callable[[str], None] = lambda _m: None) -> TrainResult:
    """Train `config` into `run_dir` (see module doc). Returns the per-epoch metrics.

    A finished run is returned as is (never retrained by accident); an unfinished one needs
    ``resume=True``; ``force=True`` starts over. Splits may be passed in (tests use tiny ones).
    `variant` names the configuration in reports (default: the augmentation policy).
    """
    config = config.validate()
    run_dir = Path(run_dir)
    progress = progress or Progress()
    device = resolve_device(config.device)
    state = "new" if force else run_state(run_dir, config)
    if state == "complete":
        log(f"{run_dir} is already complete ({config.epochs} epochs); nothing to train")
        return TrainResult(run_dir, _read_metrics(run_dir / "metrics.csv"), True, 0.0)
    if state == "partial" and not resume:
        raise RobustMnistError(f"{run_dir} holds an unfinished run; pass --resume to continue it "
                               "or --force to start over")
    run_dir.mkdir(parents=True, exist_ok=True)

    train_split = (train_split or load_split("train", data_dir, log=log)).to(device)
    test_split = (test_split or load_split("test", data_dir, log=log)).to(device)

    torch.manual_seed(config.seed)
    model = build_model(config.model)  # initialised on the CPU: same weights on any device
    model.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start_epoch = 0
    metrics: list[dict[str, float]] = []
    if state == "partial":
        ckpt = load_checkpoint(run_dir / "checkpoint.pt")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt["epoch"])
        metrics = _read_metrics(run_dir / "metrics.csv")[:start_epoch]
        log(f"resuming {run_dir} after epoch {start_epoch}")

    meta = {**artifacts.provenance(device), "data_md5": {**train_split.md5, **test_split.md5},
            "variant": variant or config.aug.policy, "run_name": run_dir.name}
    artifacts.write_json(run_dir / "config.json", {"config": config.to_dict(), **meta})

    n = len(train_split)
    steps = (n + config.batch_size - 1) // config.batch_size
    t_run = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        model.train()
        order_gen = epoch_generator(config.seed, epoch, 0, device)
        aug_gen = epoch_generator(config.seed, epoch, 1, device)
        perm = torch.randperm(n, device=device, generator=order_gen)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        progress.start(epoch + 1, steps)
        t0 = time.perf_counter()
        for step in range(steps):
            idx = perm[step * config.batch_size:(step + 1) * config.batch_size]
            x = augment(to_unit(train_split.images[idx]), config.aug, aug_gen)  # (B,1,28,28)
            y = train_split.labels[idx]
            logp = model(normalise(x, config.mean, config.std))
            loss = F.nll_loss(logp, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logp.detach().argmax(1) == y).sum()
            if step % 10 == 9 or step == steps - 1:
                done = min((step + 1) * config.batch_size, n)
                progress.step(loss.item(), correct.item() / done, done / (time.perf_counter() - t0))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        test_loss, test_acc, _ = evaluate_split(model, test_split.images, test_split.labels,
                                                config.mean, config.std)
        row = {"epoch": epoch + 1, "train_loss": loss_sum.item() / n,
               "train_accuracy": correct.item() / n, "test_loss": test_loss,
               "test_accuracy": test_acc, "epoch_seconds": seconds,
               "images_per_second": n / seconds}
        metrics.append(row)
        # Metrics first, then the checkpoint: the checkpoint's epoch says which rows count.
        _write_metrics(run_dir / "metrics.csv", metrics)
        save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, config, epoch + 1, meta)
        progress.end(row)
    seconds = time.perf_counter() - t_run
    summary = {"config": config.to_dict(), "final": metrics[-1] if metrics else None,
               "train_seconds_this_session": seconds, "version": __version__}
    artifacts.write_json(run_dir / "summary.json", summary)
    return TrainResult(run_dir, metrics, True, seconds)

