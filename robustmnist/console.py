"""What the command line shows: error lines, progress bars and tables (rich). Part of the
CLI layer: the library never prints."""

from __future__ import annotations

import errno
import functools
import signal
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from robustmnist import RobustMnistError
from robustmnist.allocator import keep_freed_memory

# markup=False: user text (file names like "scan[1].png", messages naming [[variants]]) is
# printed as it is, never read as Rich markup.
out = Console(markup=False, soft_wrap=True)  # a result line stays whole when piped
err = Console(stderr=True, markup=False)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> None:
    err.print(Text("error:", style="red"), message, highlight=False, soft_wrap=True)


def handles_errors(fn: F) -> F:
    """Every CLI command's wrapper: freed memory kept for reuse first (`allocator`; a
    misspelt ``ROBUSTMNIST_MALLOC`` is an error here, so ``--help``, which Click answers
    before any command runs, is shown whatever it says); then one 'error: ...' line and exit
    code 1 for every failure; Ctrl-C (and SIGTERM, e.g. a job scheduler's stop) exits 130
    after the same clean-up. An unexpected exception also saves its traceback to a file
    named in the message."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            keep_freed_memory()  # a step's freed memory reused, not page-faulted in again
            return fn(*args, **{k: _home_expanded(v) for k, v in kwargs.items()})
        except (typer.Exit, typer.Abort):
            raise
        except RobustMnistError as e:
            fail(str(e))
        except KeyboardInterrupt:
            err.print("interrupted: what was finished is saved (a training run's finished "
                      "epochs: the same `robustmnist train` command with --resume, or the same "
                      "`robustmnist run`, continues from them; a run whose folder was not made "
                      "yet starts again without --resume)", soft_wrap=True)
            raise typer.Exit(130) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            fix = ("choose a shorter name" if e.errno == errno.ENAMETOOLONG
                   else "check the path, its permissions and free disk space")
            fail(f"{where}{e.strerror or e}; {fix}")
        except Exception as e:  # the last line of defence: one line, traceback in a file
            with tempfile.NamedTemporaryFile("w", prefix="robustmnist-crash-", suffix=".txt",
                                             delete=False) as f:
                traceback.print_exc(file=f)
            fail(f"unexpected {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''} "
                  f"(a bug; full traceback in {f.name})")
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        raise typer.Exit(1)
    return wrapper  # type: ignore[return-value]


def _home_expanded(value: Any) -> Any:
    """A path option's value with a leading ``~`` or ``~user`` expanded (the shell leaves it in
    ``--out=~/x``), also in a list of paths; any other value as it is.

    >>> _home_expanded(Path("~/runs")) == Path.home() / "runs"
    True
    >>> _home_expanded([Path("a~"), Path("~")]) == [Path("a~"), Path.home()], _home_expanded("~")
    (True, '~')
    """
    if isinstance(value, Path):
        if not str(value).startswith("~"):
            return value
        try:
            return value.expanduser()
        except RuntimeError:  # ~name of no user here
            raise RobustMnistError(f"{value}: {value.parts[0]} is no user's home folder here; "
                                   "write the path out in full") from None
    if isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
        return [_home_expanded(v) for v in value]
    return value


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def logger(quiet: bool) -> Callable[[str], None]:
    # soft_wrap: a log line keeps its paths whole when the terminal is narrow or output is piped
    return (lambda _m: None) if quiet else (lambda m: err.print(m, highlight=False, soft_wrap=True))


class RichProgress:
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


def sweep_table(frame: Any, swept: bool) -> Table:
    table = Table(title="test accuracy (%)" + (" by stroke level" if swept else ""))
    table.add_column("run")
    table.add_column("variant")
    sets = frame.drop_duplicates(["family", "level"])[["family", "level", "measured_thickness"]]
    for _, s in sets.iterrows():
        name = "clean" if s["family"] == "clean" else f"{s['family'][:3]} {s['level']:+g}"
        table.add_column(f"{name}\n{s['measured_thickness']:.1f}px", justify="right")
    for run, g in frame.groupby("run", sort=False):
        table.add_row(str(run), str(g["variant"].iloc[0]), *[f"{100 * a:.2f}" for a in g["accuracy"]])
    return table


def prediction_table(names: list[str]) -> Table:
    table = Table(title="predictions (digit, probability; top-3)")
    table.add_column("image", overflow="fold")
    for name in names:
        table.add_column(name)
    return table


def plural(n: int, word: str) -> str:
    """``n word`` or ``n words``.

    >>> plural(1, "digit"), plural(3, "draw")
    ('1 digit', '3 draws')
    """
    return f"{n} {word}{'s' * (n != 1)}"
