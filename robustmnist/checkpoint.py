"""Checkpoints (typed, read with ``weights_only=True``) and the classifier they describe.

A checkpoint file holds only tensors and plain values: the state_dict, the optimizer state,
the epoch, the resolved `TrainConfig` and provenance. `load_checkpoint` turns it into a
`Checkpoint`, refusing anything malformed with one line naming the file; `Classifier` wraps
the network with the normalisation it was trained with, so callers hand it uint8 digits.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustmnist import RobustMnistError, artifacts
from robustmnist.config import TrainConfig
from robustmnist.layout import RunDir
from robustmnist.models import MODELS, build_model

FORMAT = "robustmnist-checkpoint-v1"
_KEYS = {"format": str, "model": str, "state_dict": dict, "epoch": int, "complete": bool,
         "config": dict, "meta": dict}


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    model: str
    state_dict: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    epoch: int                  # finished epochs
    complete: bool              # all of config.epochs done
    config: TrainConfig
    meta: dict[str, Any]        # provenance, data MD5s, variant, run name

    @property
    def run(self) -> str:
        """The run's name: its folder for ``<run>/checkpoint.pt``, else the file's stem."""
        if name := self.meta.get("run_name"):
            return str(name)
        return self.path.parent.name if self.path.name == "checkpoint.pt" else self.path.stem

    @property
    def variant(self) -> str:
        return str(self.meta.get("variant") or self.config.aug.policy)

    def identity(self) -> dict[str, Any]:
        """The columns that say which model a result row belongs to."""
        return {"run": self.run, "model": self.model, "variant": self.variant,
                "seed": self.config.seed, "epochs": self.epoch}

    def to_payload(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": self.model, "state_dict": self.state_dict,
                "optimizer": self.optimizer, "epoch": self.epoch, "complete": self.complete,
                "config": self.config.to_dict(), "meta": self.meta}


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    config: TrainConfig, epoch: int, meta: dict[str, Any]) -> None:
    ckpt = Checkpoint(Path(path), config.model,
                      {k: v.detach().cpu() for k, v in model.state_dict().items()},
                      optimizer.state_dict() if optimizer is not None else None,
                      epoch, epoch >= config.epochs, config, meta)
    artifacts.torch_save(path, ckpt.to_payload())


def checkpoint_path(path: Path) -> Path:
    """A checkpoint file, or the checkpoint of a run folder."""
    path = Path(path)
    return RunDir(path).checkpoint if path.is_dir() else path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``; clear errors for anything else."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise RobustMnistError(f"checkpoint {path} not found; pass a checkpoint.pt or run dir")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise RobustMnistError(f"{path} holds objects other than weights; refusing to load "
                                   "it (only robustmnist checkpoints are accepted)") from None
        raise RobustMnistError(f"{path} is corrupt or not a checkpoint (unreadable pickle); "
                               "retrain or restore it") from None
    except PermissionError:
        raise RobustMnistError(f"{path}: permission denied; make it readable") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, IndexError,
            KeyError, TypeError, AttributeError) as err:  # a text file: the legacy unpickler fails oddly
        raise RobustMnistError(f"{path} is corrupt or not a checkpoint ({type(err).__name__}); "
                               "retrain or restore it") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise RobustMnistError(f"{path} is not a robustmnist checkpoint (expected format {FORMAT})")
    for key, kind in _KEYS.items():
        if not isinstance(raw.get(key), kind):
            raise RobustMnistError(f"{path}: malformed checkpoint (key '{key}' missing or not "
                                   f"{kind.__name__}); retrain or restore it")
    if raw["model"] not in MODELS:
        raise RobustMnistError(f"{path}: unknown model {raw['model']!r}; "
                               f"this robustmnist knows {', '.join(MODELS)}")
    try:
        config = TrainConfig.from_dict(raw["config"])
    except RobustMnistError as err:
        raise RobustMnistError(f"{path}: its saved config is not valid here ({err}); it was "
                               "written by another robustmnist version or edited") from None
    return Checkpoint(path, raw["model"], raw["state_dict"], raw.get("optimizer"), raw["epoch"],
                      raw["complete"], config, raw["meta"])


def build_network(ckpt: Checkpoint, device: torch.device | str = "cpu") -> nn.Module:
    """The checkpoint's network with its weights, in eval mode on `device`."""
    net = build_model(ckpt.model)
    try:
        net.load_state_dict(ckpt.state_dict)
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[1:2] or [str(err)]
        raise RobustMnistError(f"{ckpt.path}: weights do not fit model {ckpt.model!r} "
                               f"({first[0].strip()[:200]})") from None
    net.to(device).eval()
    if torch.device(device).type == "cpu":
        net.to(memory_format=torch.channels_last)
    return net


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, 28, 28) -> float32 in [0, 1], channels_last (faster convs on CPU)."""
    return (images_u8.float() / 255.0).contiguous(memory_format=torch.channels_last)


def normalise(x01: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (x01 - mean) / std


#: Inference batch: on the 2-core CPU 1,000 digits a batch evaluate ~1.6x faster than 2,000
#: (the activations stay in cache); each digit is computed alone, so predictions do not
#: depend on it (log-probabilities were equal on the study's checkpoints here; the mean NLL,
#: a sum over batches, may differ in its last bits).
EVAL_BATCH = 1000


class Classifier:
    """A trained network plus the normalisation it expects: uint8 digits in, log-probs out."""

    def __init__(self, net: nn.Module, mean: float, std: float, name: str = "model") -> None:
        self.net, self.mean, self.std, self.name = net, mean, std, name

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: torch.device | str = "cpu") -> Classifier:
        return cls(build_network(ckpt, device), ckpt.config.mean, ckpt.config.std, ckpt.run)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.inference_mode()
    def log_proba(self, images_u8: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
        """(N, 10) log-probabilities of uint8 (N, 1, 28, 28) digits, on the model's device."""
        return torch.cat([logp for logp, _ in self._batches(images_u8, batch_size)])

    def _batches(self, images_u8: torch.Tensor, batch_size: int,
                 ) -> list[tuple[torch.Tensor, slice]]:
        self.net.eval()
        images_u8 = images_u8.to(self.device)
        return [(self.net(normalise(to_unit(images_u8[i:i + batch_size]), self.mean, self.std)).float(),
                 slice(i, i + batch_size)) for i in range(0, len(images_u8), batch_size)]

    @torch.inference_mode()
    def evaluate(self, images_u8: torch.Tensor, labels: torch.Tensor,
                 batch_size: int = EVAL_BATCH) -> tuple[float, float, torch.Tensor]:
        """(mean NLL, accuracy, predicted labels) on uint8 digits (batch-wise sums, so the
        figures do not depend on anything but the batch size)."""
        if len(labels) == 0:
            raise RobustMnistError("cannot evaluate on an empty set")
        labels = labels.to(self.device)
        total = torch.zeros((), device=self.device)
        preds = []
        for logp, rows in self._batches(images_u8, batch_size):
            total += F.nll_loss(logp, labels[rows], reduction="sum")
            preds.append(logp.argmax(1))
        pred = torch.cat(preds)
        return total.item() / len(labels), (pred == labels).sum().item() / len(labels), pred
