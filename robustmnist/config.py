"""Configuration: frozen dataclasses whose fields carry their own limits, and one validator.

Every setting is declared once, with its default, unit, limits and help text (`setting`).
`check` validates an instance field by field; `from_table` builds one from a TOML table (or
CLI values) with the same checks, so the CLI, the experiment files and the checkpoints all
reject the same bad values with the same ``key: reason`` message. An experiment file's
``[train]`` table is `TrainConfig` (but ``seed`` and ``aug``, which the seeds and the variants
set), each ``[[variants]]`` table is `AugConfig` (``augmentation.py``) plus a name and,
optionally, `TrainConfig` fields it overrides (all but ``seed`` and ``device``).

>>> TrainConfig(epochs=3).epochs
3
>>> from_table(TrainConfig, {"epochs": 0})
Traceback (most recent call last):
...
robustmnist.RobustMnistError: epochs: must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, get_type_hints

from robustmnist import RobustMnistError
from robustmnist.models import MODELS, check_device
from robustmnist.morphology import LADDER_RANGE
from robustmnist.pen import PEN_RANGE

C = TypeVar("C")

#: How the learning rate moves over a run (training.lr_at).
LR_SCHEDULES = ("constant", "cosine")

#: Seeds are mixed into 64-bit generator seeds (training.epoch_generator): keep them 32-bit.
MAX_SEED = 2**32 - 1


def setting(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, choices: Callable[[], Iterable[str]] | None = None,
            check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field with its limits: [lo, hi] (lo excluded when `lo_open`), allowed
    string `choices` (a callable, read when checking), or a `check` returning a reason."""
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "check": check}
    return field(default=default, metadata=meta)


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        kind, kind.__name__)


def _num(bound: float) -> str:
    """A limit as written: integers in full (MAX_SEED is not 4.29497e+09), floats as %g."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def check_value(name: str, kind: type, value: Any, meta: Mapping[str, Any]) -> Any:
    """`value` converted to `kind` (int -> float allowed) if it passes the field's limits."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise RobustMnistError(f"{name}: expected {_type_name(kind)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RobustMnistError(f"{name}: must be a finite number, got {value!r}")
    if isinstance(value, str) and "\x00" in value:
        raise RobustMnistError(f"{name}: contains a NUL character")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        raise RobustMnistError(f"{name}: must be {'>' if meta.get('lo_open') else '>='} {_num(lo)}, "
                               f"got {value!r}")
    if hi is not None and value > hi:
        raise RobustMnistError(f"{name}: must be <= {_num(hi)}, got {value!r}")
    if (choices := meta.get("choices")) is not None and value not in (options := list(choices())):
        raise RobustMnistError(f"{name}: unknown value {value!r}; choose one of {', '.join(options)}")
    if (extra := meta.get("check")) is not None and (reason := extra(value)):
        raise RobustMnistError(f"{name}: {reason}")
    return value


def check(config: C) -> C:
    """Validate every field of a config dataclass (nested configs too); return it."""
    hints = get_type_hints(type(config))
    for f in fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check(value)
        else:
            check_value(f.name, hints[f.name], value, f.metadata)
    post = getattr(config, "check_together", None)
    if post is not None:
        post()
    return config


def from_table(cls: type[C], table: Mapping[str, Any], prefix: str = "",
               **nested: Any) -> C:
    """Build and check `cls` from a mapping; unknown keys and bad values name the key
    (``prefix`` + key; with prefix ``--`` keys are named as command-line options)."""
    def label(key: str) -> str:
        return prefix + (key.replace("_", "-") if prefix == "--" else key)

    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in known or key in nested:
            options = ", ".join(sorted(known - set(nested)))
            raise RobustMnistError(f"{label(key)}: unknown key; known keys: {options}")
    hints = get_type_hints(cls)
    values = dict(nested)
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in table:
            values[f.name] = check_value(label(f.name), hints[f.name], table[f.name], f.metadata)
    try:
        return check(cls(**values))
    except RobustMnistError as err:
        raise RobustMnistError(f"{prefix}{err}") from None


def describe(cls: type) -> dict[str, str]:
    """field -> help text with its limits (for --help and error messages)."""
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}


#: policy name -> the AugConfig fields it sets (everything else keeps its default).
POLICIES: dict[str, dict[str, Any]] = {
    "none": {},
    "thickness": {"delta_min_px": -1.0, "delta_max_px": 2.0},
    "thin": {"delta_min_px": -1.0, "delta_max_px": 0.0},
    "thick": {"delta_min_px": 0.0, "delta_max_px": 2.0},
    "thickness+affine": {"delta_min_px": -1.0, "delta_max_px": 2.0, "affine": True},
    "pen": {"p_pen": 0.8},
    "pen+thickness+affine": {"p_pen": 0.5, "delta_min_px": -1.0, "delta_max_px": 2.0,
                             "affine": True},
    "wide-pen+thickness+affine": {"p_pen": 0.7, "pen_max_px": 9.0, "delta_min_px": -1.0,
                                  "delta_max_px": 2.0, "affine": True},
    "refit-pen+thickness+affine": {"p_pen": 0.7, "pen_max_px": 9.0, "pen_refit": 0.5,
                                   "delta_min_px": -1.0, "delta_max_px": 2.0, "affine": True},
    "fine-pen+thickness+affine": {"p_pen": 0.7, "pen_max_px": 9.0, "pen_refit": 0.5,
                                  "pen_fine": 0.2, "delta_min_px": -1.0, "delta_max_px": 2.0,
                                  "affine": True},
    "photo+fine-pen+thickness+affine": {"p_photo": 0.4, "p_pen": 0.7, "pen_max_px": 9.0,
                                        "pen_refit": 0.5, "pen_fine": 0.2, "delta_min_px": -1.0,
                                        "delta_max_px": 2.0, "affine": True},
}


@dataclass(frozen=True)
class AugConfig:
    """One augmentation policy, fully resolved (saved in every run's config)."""

    policy: str = setting("none", "policy name (POLICIES)", choices=lambda: POLICIES)
    delta_min_px: float = setting(0.0, "smallest stroke change, px of total width at 28x28 (<0 thins)",
                                  lo=LADDER_RANGE[0], hi=LADDER_RANGE[1])
    delta_max_px: float = setting(0.0, "largest stroke change, px (>0 thickens)",
                                  lo=LADDER_RANGE[0], hi=LADDER_RANGE[1])
    p_untouched: float = setting(0.2, "probability that an image keeps its original strokes",
                                 lo=0, hi=1)
    affine: bool = setting(False, "add a small random affine after the stroke change")
    affine_degrees: float = setting(10.0, "max rotation, degrees (uniform +/-)", lo=0, hi=180)
    affine_translate: float = setting(0.08, "max shift, fraction of the image side (uniform +/-)",
                                      lo=0, hi=0.5)
    affine_scale: float = setting(0.1, "max relative zoom (uniform 1 +/- this)", lo=0, hi=0.9)
    p_pen: float = setting(0.0, "probability that an image is redrawn along its skeleton with a "
                           "random pen (pen.py); the others get the stroke change", lo=0, hi=1)
    pen_min_px: float = setting(1.0, "thinnest pen, px of measured stroke thickness at 28x28",
                                lo=PEN_RANGE[0], hi=PEN_RANGE[1])
    pen_max_px: float = setting(6.0, "thickest pen, px (uniform between)",
                                lo=PEN_RANGE[0], hi=PEN_RANGE[1])
    pen_refit: float = setting(0.0, "probability that a redrawn digit is re-fitted into its "
                               "original's box and centre of mass (MNIST's size normalisation, "
                               "as predict applies it to a photo: a wide pen then draws a smaller "
                               "digit)", lo=0, hi=1)
    pen_fine: float = setting(0.0, "probability that a redrawn digit gets a fine pen instead: a "
                              "line narrower than a pixel (render width uniform in 0.25-1 px, "
                              "below the measurement floor; measures 1.07-1.49 px), its strongest "
                              "ink put back at full after the affine, as a photo's contrast "
                              "stretch does", lo=0, hi=1)
    p_photo: float = setting(0.0, "probability that a digit is replaced by a photograph of it "
                             "(the photo family's generator and predict's preprocessing, a pen "
                             "0.10-0.30 of its height; built once per training set, "
                             "photobank.py); the others get the pen or the stroke change; the "
                             "affine applies to all", lo=0, hi=1)

    @property
    def is_identity(self) -> bool:
        thickness_off = self.delta_min_px == 0 and self.delta_max_px == 0
        return thickness_off and not self.affine and self.p_pen == 0 and self.p_photo == 0

    def check_together(self) -> None:
        # Named by their first field, so a TOML error reads "key 'variants[0].pen_min_px': ...".
        if self.delta_min_px > self.delta_max_px:
            raise RobustMnistError(
                f"delta_min_px: augmentation range [{self.delta_min_px:g}, {self.delta_max_px:g}] px "
                "is invalid; need delta_min_px <= delta_max_px")
        if self.pen_refit > 0 and self.p_pen == 0:
            raise RobustMnistError(
                f"pen_refit: {self.pen_refit:g} re-fits redrawn digits, but p_pen is 0 (no digit "
                "is redrawn); set p_pen > 0 or pen_refit = 0")
        if self.pen_fine > 0 and self.p_pen == 0:
            raise RobustMnistError(
                f"pen_fine: {self.pen_fine:g} gives redrawn digits a fine pen, but p_pen is 0 (no "
                "digit is redrawn); set p_pen > 0 or pen_fine = 0")
        if self.pen_min_px > self.pen_max_px:
            raise RobustMnistError(
                f"pen_min_px: pen range [{self.pen_min_px:g}, {self.pen_max_px:g}] px is invalid; "
                "need pen_min_px <= pen_max_px")

    def validate(self) -> AugConfig:
        return check(self)

    @classmethod
    def from_policy(cls, policy: str, **overrides: Any) -> AugConfig:
        """The named policy's defaults with `overrides` (None values ignored) applied.

        >>> AugConfig.from_policy("thick", p_untouched=0.5).delta_max_px
        2.0
        """
        if policy not in POLICIES:
            raise RobustMnistError(f"unknown augmentation {policy!r}; choose one of {', '.join(POLICIES)}")
        chosen = {k: v for k, v in overrides.items() if v is not None}
        return from_table(cls, {**POLICIES[policy], **chosen}, policy=policy)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result (the classic recipe by default)."""

    model: str = setting("baseline", "model name (models.MODELS)", choices=lambda: MODELS)
    epochs: int = setting(20, "passes over the 60,000 training images", lo=1, hi=1000)
    batch_size: int = setting(512, "images per Adam step", lo=1, hi=60_000)
    lr: float = setting(1e-3, "Adam learning rate", lo=0, lo_open=True, hi=10)
    lr_schedule: str = setting("constant", "constant: lr throughout (the classic recipe); "
                               "cosine: lr decayed along a half cosine towards 0 (reached just "
                               "after the last step)", choices=lambda: LR_SCHEDULES)
    seed: int = setting(0, "model init, batch order and augmentation draws", lo=0, hi=MAX_SEED)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N (auto = cuda if available)",
                          check=check_device)
    mean: float = setting(0.1307, "normalisation mean of MNIST pixels in [0, 1]", lo=0, hi=1)
    std: float = setting(0.3081, "normalisation std", lo=0, lo_open=True, hi=10)
    aug: AugConfig = field(default_factory=AugConfig)

    def validate(self) -> TrainConfig:
        return check(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """The config saved in a checkpoint or config.json (checked like a TOML table)."""
        d = dict(d)
        aug = d.pop("aug", {})
        if not isinstance(aug, Mapping):
            raise RobustMnistError(f"aug: expected a table, got {aug!r}")
        return from_table(cls, d, aug=from_table(AugConfig, aug, "aug."))

    def result_fields(self) -> dict[str, Any]:
        """The fields that change the trained weights (device excluded: it only picks hardware)."""
        d = self.to_dict()
        d.pop("device")
        return d


def aug_from_options(policy: str, aug_range: str | None, aug_p: float | None,
                     aug_refit: float | None = None) -> AugConfig:
    """The AugConfig for ``--aug``, ``--aug-range MIN,MAX``, ``--aug-p`` and ``--aug-refit``
    (the policy's defaults where unset).

    >>> aug_from_options("thickness", "-1,1.5", None).delta_max_px
    1.5
    >>> aug_from_options("fine-pen+thickness+affine", "-2,4", None, 0.8).pen_refit
    0.8
    """
    lo = hi = None
    if aug_range is not None:
        try:
            lo, hi = (float(v) for v in aug_range.split(","))
        except ValueError:
            raise RobustMnistError(f"--aug-range {aug_range!r}: expected MIN,MAX such as -1,2") from None
    if policy == "none" and (aug_range is not None or aug_p is not None or aug_refit is not None):
        given = [f for f, v in (("--aug-range", aug_range), ("--aug-p", aug_p),
                                ("--aug-refit", aug_refit)) if v is not None]
        raise RobustMnistError(f"{', '.join(given)} with --aug none: the baseline changes no digit "
                               "(the run would be recorded as `none`); choose a policy such as "
                               f"--aug thickness or drop {', '.join(given)}")
    if aug_refit and policy in POLICIES and not POLICIES[policy].get("p_pen"):
        pens = ", ".join(p for p, fields in POLICIES.items() if fields.get("p_pen"))
        raise RobustMnistError(f"--aug-refit {aug_refit:g}: policy {policy!r} redraws no digit "
                               f"with a pen; choose a pen policy ({pens}) or drop --aug-refit")
    try:
        return AugConfig.from_policy(policy, delta_min_px=lo, delta_max_px=hi, p_untouched=aug_p,
                                     pen_refit=aug_refit)
    except RobustMnistError as err:
        # Name the option the user typed, not the field it sets.
        key, sep, reason = str(err).partition(": ")
        flag = {"delta_min_px": "--aug-range", "delta_max_px": "--aug-range",
                "p_untouched": "--aug-p", "pen_refit": "--aug-refit"}.get(key)
        raise RobustMnistError(f"{flag} ({key}): {reason}" if flag and sep else str(err)) from None
