"""Atomic file writes and the provenance stamped next to every checkpoint and result."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock, Timeout

from robustmnist import RobustMnistError, __version__

#: Written into every folder robustmnist creates: what it may later replace or delete.
OWNER_MARK = ".robustmnist"
LOCK_NAME = ".robustmnist.lock"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`.

    A crash or Ctrl-C in the block leaves the previous `path` untouched. A symbolic link at
    `path` is replaced itself, never the file it points to (which robustmnist may not own).
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise RobustMnistError(f"{path} is a folder; name a file to write")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{_short(path.name)}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600: others could not read it
            os.replace(tmp_path, path)
        except OSError as err:
            raise write_error(path, err) from None
    finally:
        tmp_path.unlink(missing_ok=True)


_SHORT_LIMIT = 200  # bytes of a name kept in a temporary file's name


def _short(name: str, limit: int = _SHORT_LIMIT) -> str:
    """`name` cut to at most `limit` bytes of UTF-8 (whole characters): a temporary file's
    name stays within the 255 bytes a file system allows, however long the file's own.

    >>> _short("é" * 150) == "é" * 100, _short("a" + "é" * 150) == "a" + "é" * 99, _short("run.json")
    (True, True, 'run.json')
    """
    return os.fsencode(name)[:limit].decode("utf-8", errors="ignore")  # any bytes a name may hold


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files `atomic_path` left in a folder robustmnist owns when a write
    was killed (SIGKILL, power loss): call it holding the folder's lock. Returns them."""
    folder = Path(folder)
    if not owns(folder):
        return []
    stale = [p for p in folder.glob(".*.tmp") if p.is_file() and not p.is_symlink()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _remove_killed_writes(path: Path) -> None:
    """Delete the temporary files that killed writes of `path` left (`atomic_path`'s exact
    name for it: ``.<name>.<mkstemp's 8 characters>.tmp``), plain files only. Only for a name
    `atomic_path` does not cut (a cut name could be another file's), and only by a caller
    holding `path`'s lock, so no live writer of it exists."""
    if len(os.fsencode(path.name)) > _SHORT_LIMIT:
        return
    form = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if form.fullmatch(stale.name) and stale.is_file() and not stale.is_symlink():
            with contextlib.suppress(OSError):  # another user's, in a shared folder: left
                stale.unlink()


def current_umask() -> int:
    """The process umask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: Path, err: OSError) -> RobustMnistError:
    """One line for a failed write: the path, the reason, the way out (by the reason).

    >>> import errno
    >>> print(write_error(Path("a/b.json"), OSError(errno.ENOTDIR, "Not a directory")))
    cannot write a/b.json (Not a directory); a folder on its path is a file: choose another path
    """
    if err.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := _file_on_path(path)):
        return _blocked(path, blocker)
    fix = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space",
           errno.ENOTDIR: "a folder on its path is a file: choose another path",
           errno.EEXIST: "a folder on its path is a file: choose another path",  # its mkdir
           errno.EISDIR: "it is a folder: name a file",
           errno.ENAMETOOLONG: "the name is too long: choose a shorter one",
           }.get(err.errno or 0, "choose a writable location")
    return RobustMnistError(f"cannot write {path} ({err.strerror or err}); {fix}")


def _file_on_path(path: Path) -> Path | None:
    """The nearest folder of `path` that exists as something else than a folder (a file in
    a folder's place), or None."""
    for above in Path(path).parents:
        if above.exists() or above.is_symlink():
            return None if above.is_dir() else above
    return None


def _blocked(path: Path, blocker: Path) -> RobustMnistError:
    return RobustMnistError(f"cannot write {path}: {blocker} is a file where a folder is needed; "
                            "move it away, or choose another path")


def cache_file_present(path: Path) -> bool:
    """Whether a data-folder cache file is there to read (a link to one counts); raises one
    line when something that is not a file is in its place (a folder, a pipe: reading a pipe
    would wait forever)."""
    path = Path(path)
    if not path.exists():
        return False
    if path.is_file():
        return True
    kind = "a folder" if path.is_dir() else "not a regular file"
    raise RobustMnistError(f"{path} is {kind} where robustmnist keeps a cache file; move it "
                           f"away, or {CACHE_FIX}")


T = TypeVar("T")


def sha256_of(*arrays: Any) -> str:
    """The hex SHA-256 of each array's bytes (C order), concatenated: a cache file's checksum."""
    import numpy as np

    return "".join(hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in arrays)


def checked_npz(arrays: dict[str, Any], meta: dict[str, Any]) -> bytes:
    """The bytes of an .npz holding `arrays` and `meta` plus their checksum (`load_checked_npz`)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays, meta=np.array(json.dumps({**meta, "sha256": sha256_of(*arrays.values())})))
    return buf.getvalue()


def load_checked_npz(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any] | None:
    """The arrays of a `checked_npz` file (name -> the shape it must have, in the order they
    were written), or None if it is missing, unreadable, misshapen or fails its checksum."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in shapes}
            meta: Any = json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    if (not isinstance(meta, dict) or any(a.shape != shapes[k] for k, a in arrays.items())
            or meta.get("sha256") != sha256_of(*arrays.values())):
        return None
    return arrays


#: The way out of a data-folder cache that cannot be used (`load_or_build`'s errors).
CACHE_FIX = "--data-dir (or $ROBUSTMNIST_DATA_DIR) chooses another data folder"


def load_or_build(path: Path, load: Callable[[Path], T | None], build: Callable[[], tuple[T, bytes]],
                  announce: Callable[[str], None] = lambda _why: None,
                  log: Callable[[str], None] = lambda _msg: None) -> tuple[T, bool]:
    """A data-folder cache file's content: ``load(path)`` (None when missing, unreadable or
    failing its hash), else ``build()`` -> (value, file bytes), written atomically. A second
    process wanting the same file waits on a lock for the first one's build instead of
    repeating it; a valid file is read without the lock (a read-only cache serves as is).
    `announce` gets why a build starts ("once" or the rebuild's reason), `log` a line when
    another process holds the lock, or when the built file could not be written (the value is
    returned all the same). Returns (value, built).

    Everything that would stop the build's result from being kept is checked before the build
    (which may take minutes): a folder in the file's place, a folder that cannot be written.
    A temporary file that a killed write of this same file left behind is removed.
    """
    path = Path(path)
    if cache_file_present(path) and (cached := load(path)) is not None:
        return cached, False
    if blocker := _file_on_path(path):
        raise RobustMnistError(f"{blocker} is a file where robustmnist needs a folder for "
                               f"{path}; move it away, or {CACHE_FIX}")
    lock = FileLock(f"{path}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # another process holds it: say so, then wait for its build
            log(f"waiting for another robustmnist process to finish building {path}")
            lock.acquire()
    except OSError as err:
        if Path(lock.lock_file).is_dir():
            raise RobustMnistError(f"{lock.lock_file} is a folder where robustmnist keeps a lock "
                                   f"file; move it away, or {CACHE_FIX}") from None
        raise RobustMnistError(f"{write_error(Path(lock.lock_file), err)}, or {CACHE_FIX}") from None
    try:
        if cache_file_present(path) and (cached := load(path)) is not None:
            return cached, False  # built meanwhile by the holder of the lock
        if not os.access(path.parent, os.W_OK):  # the lock can exist in a read-only folder
            raise RobustMnistError(f"cannot write {path} (its folder is read-only); make it "
                                   f"writable, or {CACHE_FIX}")
        _remove_killed_writes(path)  # under the file's lock: no live writer of it
        announce("unreadable or failing its checksum: rebuilding it" if path.exists() else "once")
        value, data = build()
        try:
            write_bytes(path, data)
        except RobustMnistError as err:  # the build is not lost: this run goes on without the cache
            log(f"{err}; not cached, so the next run builds it again")
        return value, True
    finally:
        lock.release()


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_save(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def claim_dir(path: Path, what: str = "folder") -> Path:
    """Make `path` a folder robustmnist owns: create it (with the owner mark) or accept one
    that is empty or already marked. Anything else is refused, so a user's own files are
    never replaced or deleted."""
    path = Path(path)
    if path.is_symlink():
        raise RobustMnistError(f"{path} is a symbolic link; name the real folder for the {what}")
    if path.exists() and not path.is_dir():
        raise RobustMnistError(f"{path} is a file, not a folder; choose a folder for the {what}")
    try:
        if path.is_dir() and not owns(path):
            foreign = sorted(p.name for p in path.iterdir())
            if foreign:
                raise RobustMnistError(
                    f"{path} is not empty and robustmnist did not create it ({', '.join(foreign[:3])}"
                    f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder for the "
                    f"{what} (if robustmnist wrote it, create an empty {OWNER_MARK} file in it)")
        path.mkdir(parents=True, exist_ok=True)
        mark = path / OWNER_MARK
        if not mark.exists():
            mark.write_text(json.dumps({"created_by": "robustmnist", "version": __version__}) + "\n")
    except OSError as err:
        raise write_error(path, err) from None
    return path


def check_replaceable(path: Path, starts: bytes, what: str, mark: bytes | None = None) -> Path:
    """Refuse to write the file `path` over something robustmnist did not write: an existing
    file is replaced only when it begins with `starts` (the signature of a `what`) and, if
    `mark` is given, holds it in its first 4 KiB (e.g. a PNG's ``Software`` text chunk).

    >>> check_replaceable(Path("no-such-file.png"), b"\\x89PNG", "PNG")
    PosixPath('no-such-file.png')
    """
    path = Path(path)
    if path.is_dir():
        raise RobustMnistError(f"{path} is a folder; name a file for the {what}")
    if blocker := _file_on_path(path):  # found before any work is done, not at the write
        raise _blocked(path, blocker)
    if path.exists():
        try:
            with open(path, "rb") as f:
                head = f.read(max(len(starts), 4096 if mark else 0))
        except OSError as err:
            raise write_error(path, err) from None
        if not head.startswith(starts) or (mark is not None and mark not in head):
            raise RobustMnistError(f"{path} exists and is not a {what} robustmnist wrote; choose "
                                   "another path or move that file away")
    return path


def owns(path: Path) -> bool:
    """True for a folder robustmnist created (it carries the owner mark)."""
    return (Path(path) / OWNER_MARK).is_file()


@contextlib.contextmanager
def folder_lock(path: Path, what: str = "folder") -> Iterator[None]:
    """Hold `path`'s lock file; another process asking for it gets a clear error at once."""
    lock = FileLock(str(Path(path) / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RobustMnistError(f"{path} is in use by another robustmnist process (lock "
                               f"{Path(path) / LOCK_NAME}); wait for it to finish or choose "
                               f"another {what}") from None
    except OSError as err:
        raise write_error(Path(path) / LOCK_NAME, err) from None
    try:
        yield
    finally:
        lock.release()


def git_revision(start: Path | None = None) -> str | None:
    """The git revision of the source tree robustmnist runs from (with `-dirty`), or None."""
    here = start or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev or None


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What ran a job: enough to judge a wall time or reproduce a number."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "host_cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "robustmnist": __version__,
        "device": str(device),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["host_cpu"] = line.split(":", 1)[1].strip()
                break
    if device.type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = info["host_cpu"]
    return info


def provenance(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Package version, git revision and machine, stamped next to every output."""
    return {"version": __version__, "git_revision": git_revision(), "machine": machine_info(device)}
