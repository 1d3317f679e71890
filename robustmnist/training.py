"""The trainer: MNIST on the device, randperm batches, on-device augmentation, atomic
checkpoints every epoch, exact resume.

A run directory holds:

* ``config.json``   the resolved TrainConfig plus provenance (version, git revision, machine;
                    for pen policies the id of the pen atlas, ``pen_atlas``; for photo
                    policies the id of the training photos, ``photo_bank``);
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
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustmnist import RobustMnistError, __version__, artifacts
from robustmnist.augmentation import AugParams, RungTable, apply, concat, rungs_for, sample_batches
from robustmnist.checkpoint import Classifier, load_checkpoint, normalise, save_checkpoint, to_unit
from robustmnist.config import AugConfig, TrainConfig
from robustmnist.data import MnistSplit, load_split
from robustmnist.layout import RunDir
from robustmnist.models import build_model, resolve_device
from robustmnist.pen import PenAtlas, atlas_id, training_atlas
from robustmnist.photobank import PhotoBank, bank_id, training_bank

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                  "epoch_seconds", "images_per_second"]


#: Training batches augmented per `apply` call (`training_batches`). Several per call share the
#: per-call overhead of the augmentation's small ops, with the same floats, but on the 2-core
#: CPU measured no faster for most policies: their ops are bound by memory, and a 512-digit
#: batch (1.6 MB a tensor) stays in cache where four do not (at 4 per call 0.98-1.27x the
#: one-batch time by each size's least pass, `benchmarks/results/aug-group-2026-12-02-1926.md`).
#: Worth measuring again on a GPU, where launches cost more (`benchmarks/aug_group.py`).
AUG_GROUP = 1
#: ... except, on the CPU, for the policies that re-fit or fine-pen redrawn digits, whose
#: augmentation is mostly small per-row operations (boxes, centres, matrices): 0.84-0.88x at 4
#: per call there. (2 per call measured 0.84-0.90x for the stroke-only policies, ~0.005 s an
#: epoch: not taken.) Elsewhere 1: other devices' sums may depend on the batch's shape, and a
#: grouped call must give each row the floats of its own batch (tested on the CPU only).
AUG_GROUP_REFIT = 4


def aug_group(config: AugConfig, device: torch.device | str = "cpu") -> int:
    """Batches per `apply` call for `config` on `device` (`AUG_GROUP` or `AUG_GROUP_REFIT`).

    >>> fine = AugConfig.from_policy("fine-pen+thickness+affine")
    >>> aug_group(fine), aug_group(AugConfig()), aug_group(fine, "cuda")
    (4, 1, 1)
    """
    small_ops = config.p_pen > 0 and (config.pen_refit > 0 or config.pen_fine > 0)
    return AUG_GROUP_REFIT if small_ops and torch.device(device).type == "cpu" else AUG_GROUP


def training_batches(images_u8: torch.Tensor, order: torch.Tensor, batch_size: int,
                     config: AugConfig, generator: torch.Generator, atlas: PenAtlas | None = None,
                     group: int | None = None, rungs: RungTable | None = None,
                     photos: PhotoBank | None = None,
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(indices, images in [0, 1]) of each batch of `order`, augmented exactly as batch by
    batch ``augment`` would: each batch's parameters are drawn in turn from `generator`, all
    at the start (`augmentation.sample_batches`), then `group` (default `aug_group`) batches
    are applied in one call (`augmentation.concat`).
    `atlas`, `rungs` (`stroke_rungs`) and `photos` are the whole set's; the batches' rows are
    taken.

    >>> images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    >>> g = torch.Generator().manual_seed(0)
    >>> [tuple(x.shape) for _, x in training_batches(images, torch.arange(10), 4,
    ...                                               AugConfig.from_policy("thick"), g)]
    [(4, 1, 28, 28), (4, 1, 28, 28), (2, 1, 28, 28)]
    """
    group = aug_group(config, images_u8.device) if group is None else group
    if group < 1:
        raise ValueError(f"group: need at least 1 batch per call, got {group}")
    drawn: list[AugParams] = []
    if not config.is_identity:  # every batch's parameters, in turn, in one go (the same draws)
        drawn = sample_batches(config, [len(part) for part in order.split(batch_size)], generator)
    for b, start in enumerate(range(0, len(order), batch_size * group)):
        chunk = order[start:start + batch_size * group]
        parts = chunk.split(batch_size)
        x = to_unit(images_u8.index_select(0, chunk))  # = images_u8[chunk], ~10x cheaper
        if not config.is_identity:
            params = concat(drawn[b * group:(b + 1) * group])
            x = apply(x, params, None if atlas is None else atlas[chunk],
                      None if rungs is None else rungs[chunk],
                      None if photos is None else photos[chunk])
        yield from zip(parts, x.split(batch_size), strict=True)


def stroke_rungs(images_u8: torch.Tensor, config: AugConfig) -> RungTable | None:
    """The rungs the trainer serves the stroke change from, or None: on the CPU, for a policy
    that changes strokes (the stroke-only policies' augmentation 0.53-0.71x the per-batch
    chain's time, the same floats: ``benchmarks/results/aug-ab-2026-12-02-1639.md``). On a
    GPU the chain runs per batch in Kornia (cheap there; the table not measured there)."""
    return rungs_for(images_u8, config) if images_u8.device.type == "cpu" else None


def epoch_generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator for one (seed, epoch, stream): resume replays exactly what was drawn."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch) * 8 + stream)
    return g


def default_variant(config: TrainConfig) -> str:
    """A run's name in reports when none is given: its policy, plus its model and schedule
    where they are not the classic recipe's, so runs of one policy on two recipes are not
    averaged as seeds of one variant.

    >>> default_variant(TrainConfig(model="wide", lr_schedule="cosine"))
    'none+wide+cosine'
    """
    extra = [config.model] * (config.model != "baseline") + [config.lr_schedule] * (
        config.lr_schedule != "constant")
    return "+".join([config.aug.policy, *extra])


def lr_at(config: TrainConfig, step: int, steps: int) -> float:
    """The learning rate of optimizer step `step` of `steps` in the whole run (0-based): a
    function of the step alone, so a resumed run sets what the uninterrupted one set.

    >>> c = TrainConfig(lr=0.01, lr_schedule="cosine")
    >>> [round(lr_at(c, s, 5), 5) for s in range(5)]
    [0.01, 0.00905, 0.00655, 0.00345, 0.00095]
    """
    if config.lr_schedule == "constant":
        return config.lr
    # cosine: the half cosine sampled at each step's start, the last step just above 0
    return config.lr * 0.5 * (1 + math.cos(math.pi * step / steps))


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


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (int(row[k]) if k == "epoch" else row[k]) for k in METRIC_COLUMNS})
    artifacts.write_text(path, buf.getvalue())


class SettingsMismatch(RobustMnistError):
    """A run folder holds a run with other settings; `what` names them (saved vs asked)."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


def run_state(run_dir: Path, config: TrainConfig) -> str:
    """'new', 'partial' or 'complete' for `config` in `run_dir`; error if it holds another run
    (by its checkpoint, or by the config.json of a run stopped before its first epoch ended:
    its folder's name may say what it was asked to train)."""
    run = RunDir(Path(run_dir))
    ckpt = load_checkpoint(run.checkpoint) if run.checkpoint.exists() else None
    if ckpt is not None:
        saved = ckpt.config.result_fields()
    else:
        try:
            saved = TrainConfig.from_dict(json.loads(run.config.read_text())["config"]).result_fields()
        except (OSError, ValueError, KeyError, TypeError, RobustMnistError):
            return "new"  # nothing readable was started here
    wanted = config.result_fields()
    if saved != wanted:
        def flat(fields: dict) -> dict:  # aug fields first, then the others by name
            return {**{f"aug.{k}": v for k, v in fields.get("aug", {}).items()},
                    **{k: fields[k] for k in sorted(fields) if k != "aug"}}

        old = flat(saved)
        what = ", ".join(f"{k}: saved {old.get(k)!r}, asked {v!r}"
                         for k, v in flat(wanted).items() if old.get(k) != v)
        raise SettingsMismatch(f"{run_dir} holds a run with other settings ({what}); to resume "
                               "it, pass its settings; else choose another --out or pass --force "
                               "to start over (that discards it)", what)
    if ckpt is None:
        return "new"
    return "complete" if ckpt.complete else "partial"


def train(config: TrainConfig, run_dir: Path, *, resume: bool = False, force: bool = False,
          data_dir: Path | None = None, train_split: MnistSplit | None = None,
          test_split: MnistSplit | None = None, progress: Progress | None = None,
          variant: str | None = None, log: Callable[[str], None] = lambda _m: None) -> TrainResult:
    """Train `config` into `run_dir` (see module doc). Returns the per-epoch metrics.

    A finished run is returned as is (never retrained by accident); an unfinished one needs
    ``resume=True``; ``force=True`` starts over (only in a folder robustmnist made). Splits may
    be passed in (tests use tiny ones). `variant` names the configuration in reports (default:
    `default_variant`). One process at a time per run folder (a lock file).
    """
    if resume and force:
        raise RobustMnistError(f"{run_dir}: --resume and --force contradict (continue it, or "
                               "start over and discard it); pass one")
    config = config.validate()
    run = RunDir(Path(run_dir))
    device = resolve_device(config.device)
    artifacts.claim_dir(run.root, what="run folder")
    with artifacts.folder_lock(run.root, "run folder"):
        artifacts.remove_stale_temp_files(run.root)  # of a write killed in an earlier attempt
        return _train_locked(config, run, device, resume=resume, force=force, data_dir=data_dir,
                             train_split=train_split, test_split=test_split,
                             progress=progress or Progress(), variant=variant, log=log)


def _train_locked(config: TrainConfig, run: RunDir, device: torch.device, *, resume: bool,
                  force: bool, data_dir: Path | None, train_split: MnistSplit | None,
                  test_split: MnistSplit | None, progress: Progress, variant: str | None,
                  log: Callable[[str], None]) -> TrainResult:
    state = "new" if force else run_state(run.root, config)
    if state == "complete":
        log(f"{run.root} is already complete ({config.epochs} epochs); nothing to train")
        return TrainResult(run.root, run.read_metrics(), True, 0.0)
    if state == "partial" and not resume:
        raise RobustMnistError(f"{run.root} holds an unfinished run; pass --resume to continue it "
                               "or --force to start over")
    train_split = train_split or load_split("train", data_dir, log=log)
    # What the redraws and photos come from (their algorithms and the digits' hash).
    pixels = train_split.images.cpu().numpy()
    sources = {**({"pen_atlas": atlas_id(pixels)} if config.aug.p_pen > 0 else {}),
               **({"photo_bank": bank_id(pixels)} if config.aug.p_photo > 0 else {})}
    train_split = train_split.to(device)
    test_split = (test_split or load_split("test", data_dir, log=log)).to(device)

    torch.manual_seed(config.seed)
    model = build_model(config.model)  # initialised on the CPU: same weights on any device
    model.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start_epoch = 0
    metrics: list[dict[str, float]] = []
    recorded = sources  # a resumed run from before a source was recorded is not stamped now
    if state == "partial":
        start_epoch, metrics, recorded = _resume(run, model, optimizer, device, sources)
        log(f"resuming {run.root} after epoch {start_epoch}")
        for key in sources.keys() - recorded.keys():
            log(f"{run.root} does not record its {key.replace('_', ' ')} (an older run): not checked")
    # Built after the checks: a run that cannot resume is refused before a long build.
    pen_atlas = (training_atlas(train_split.images, data_dir, log).to(device)
                 if "pen_atlas" in sources else None)  # pen policies: skeletons, built once
    photos = (training_bank(train_split.images, data_dir, log).to(device)
              if "photo_bank" in sources else None)  # photo policies: photographed once
    rungs = stroke_rungs(train_split.images, config.aug)  # stroke rungs, built once (the CPU)

    meta = {**artifacts.provenance(device), "data_md5": {**train_split.md5, **test_split.md5},
            "variant": variant or default_variant(config), "run_name": run.root.name}
    meta.update(recorded)  # the pen redraws depend on the atlas, the photos on the bank
    artifacts.write_json(run.config, {"config": config.to_dict(), **meta})
    t_run = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        metrics.append(_one_epoch(model, optimizer, config, epoch, train_split, test_split,
                                  device, progress, pen_atlas, rungs, photos))
        # Metrics first, then the checkpoint: the checkpoint's epoch says which rows count.
        _write_metrics(run.metrics, metrics)
        save_checkpoint(run.checkpoint, model, optimizer, config, epoch + 1, meta)
        progress.end(metrics[-1])
    seconds = time.perf_counter() - t_run
    summary = {"config": config.to_dict(), "final": metrics[-1] if metrics else None,
               "train_seconds_this_session": seconds, "version": __version__}
    artifacts.write_json(run.summary, summary)
    return TrainResult(run.root, metrics, True, seconds)


#: What each recorded source of a run's augmentation is, for `_resume`'s refusal.
_SOURCES = {"pen_atlas": ("pen atlas", "draws its pens", "another atlas algorithm",
                          "two pen renderings"),
            "photo_bank": ("training photos", "photographs its digits", "another photo generator",
                           "two photo renderings")}


def _resume(run: RunDir, model: nn.Module, optimizer: torch.optim.Optimizer,
            device: torch.device, sources: dict[str, str] | None = None,
            ) -> tuple[int, list[dict[str, float]], dict[str, str]]:
    """Load the unfinished run's state; refuse what would not replay the same numbers. Returns
    (finished epochs, their metrics, those of `sources` (pen atlas, photo bank) the run
    recorded)."""
    ckpt = load_checkpoint(run.checkpoint)
    recorded = {k: ckpt.meta[k] for k in (sources or {}) if ckpt.meta.get(k) is not None}
    for key, value in recorded.items():
        if value != (sources or {})[key]:
            what, does, other, mixed = _SOURCES[key]
            raise RobustMnistError(
                f"{run.root} was trained on {what} {value!r}, this robustmnist {does} from "
                f"{(sources or {})[key]!r} ({other} or other training digits); start over "
                "(train --force, or delete that run folder for robustmnist run): resuming would "
                f"mix {mixed} in one run")
    threads = ckpt.meta.get("machine", {}).get("torch_threads")
    if device.type == "cpu" and threads and threads != torch.get_num_threads():
        raise RobustMnistError(
            f"{run.root} was trained with {threads} CPU threads, this process has "
            f"{torch.get_num_threads()}; resume with --threads {threads} (robustmnist run: the "
            "same --jobs on a machine with as many cores; another thread count changes float "
            "sums, so the result would differ from an uninterrupted run)")
    try:
        model.load_state_dict(ckpt.state_dict)
        optimizer.load_state_dict(ckpt.optimizer or {})
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise RobustMnistError(f"{run.checkpoint}: does not fit model {ckpt.model!r} "
                               f"({str(err).splitlines()[0][:160]}); pass --force to start over") from None
    metrics = run.read_metrics()[:ckpt.epoch]
    if len(metrics) != ckpt.epoch:
        raise RobustMnistError(f"{run.metrics} has {len(metrics)} rows for {ckpt.epoch} finished "
                               "epochs; restore it or pass --force to start over")
    return ckpt.epoch, metrics, recorded


def _one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
               epoch: int, train_split: MnistSplit, test_split: MnistSplit,
               device: torch.device, progress: Progress,
               pen_atlas: PenAtlas | None = None,
               rungs: RungTable | None = None,
               photos: PhotoBank | None = None) -> dict[str, float]:
    """One pass over the training set, then the test set; returns the metrics row."""
    model.train()
    order_gen = epoch_generator(config.seed, epoch, 0, device)
    aug_gen = epoch_generator(config.seed, epoch, 1, device)
    n = len(train_split)
    steps = (n + config.batch_size - 1) // config.batch_size
    perm = torch.randperm(n, device=device, generator=order_gen)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    progress.start(epoch + 1, steps)
    scheduled = config.lr_schedule != "constant"  # the classic recipe leaves Adam's lr alone
    t0 = time.perf_counter()
    batches = training_batches(train_split.images, perm, config.batch_size, config.aug, aug_gen,
                               pen_atlas, rungs=rungs, photos=photos)
    for step, (idx, x) in enumerate(batches):  # x: (B, 1, 28, 28) in [0, 1], augmented
        if scheduled:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, epoch * steps + step, config.epochs * steps)
        y = train_split.labels.index_select(0, idx)
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
    test_loss, test_acc, _ = Classifier(model, config.mean, config.std).evaluate(
        test_split.images, test_split.labels)
    return {"epoch": epoch + 1, "train_loss": loss_sum.item() / n,
            "train_accuracy": correct.item() / n, "test_loss": test_loss,
            "test_accuracy": test_acc, "epoch_seconds": seconds, "images_per_second": n / seconds}
