"""gpunn.train.data: the shipped digits, the spiral, MNIST files written by the tests, split,
standardization, one-hot labels and device-side batches."""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
import zipfile
from importlib import resources

import numpy as np
import pytest

import gpunn as gn
from gpunn.train import batches as batching
from gpunn.train import data

# ----------------------------------------------------------------------------- digits


def test_digits_ships_inside_the_package():
    resource = resources.files("gpunn.train").joinpath("datasets").joinpath("digits.npz")
    assert resource.is_file()
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        assert npz["images"].dtype == np.uint8
        assert npz["images"].shape == (1797, 64)


def test_digits_shape_dtype_range_and_classes():
    x, y = gn.data.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 16.0
    assert np.array_equal(x, np.round(x))  # pixel counts are whole numbers
    counts = np.bincount(y)
    assert len(counts) == 10
    assert counts.min() >= 170 and counts.max() <= 190
    assert counts.sum() == 1797


def test_digits_returns_copies_the_caller_may_modify():
    x, y = data.load_digits()
    x_before, y_before = x.copy(), y.copy()
    x[:] = -1.0  # would raise on a read-only cached array
    y[:] = -1
    x2, y2 = data.load_digits()
    assert np.array_equal(x2, x_before) and np.array_equal(y2, y_before)


# ----------------------------------------------------------------------------- spiral


def test_spiral_shapes_labels_and_radius():
    x, y = data.make_spiral(points_per_class=50, classes=4, noise=0.1, seed=3)
    assert x.shape == (200, 2) and x.dtype == np.float32
    assert y.shape == (200,) and y.dtype == np.int64
    assert np.array_equal(np.bincount(y), [50] * 4)
    r = np.hypot(x[:, 0], x[:, 1])
    np.testing.assert_allclose(r[:50], np.linspace(0, 1, 50), atol=1e-6)  # noise moves only the angle


def test_spiral_is_deterministic_for_a_seed():
    a = data.make_spiral(seed=1)
    b = data.make_spiral(seed=1)
    c = data.make_spiral(seed=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_spiral_without_noise_follows_the_formula():
    x, _ = data.make_spiral(points_per_class=10, classes=3, noise=0.0)
    r, t = np.linspace(0, 1, 10), np.linspace(4.0, 8.0, 10)
    np.testing.assert_allclose(x[10:20], np.c_[r * np.sin(t), r * np.cos(t)], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"points_per_class": 0}, "points_per_class"), ({"noise": -1.0}, "noise")]
)
def test_spiral_validates(kwargs, name):
    with pytest.raises(ValueError, match=name):
        data.make_spiral(**kwargs)


# ----------------------------------------------------------------------------- MNIST files


def _idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 0x00000803, n, rows, cols) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


@pytest.fixture
def mnist_arrays():
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, size=(5, 4, 4), dtype=np.uint8),
        np.array([3, 1, 4, 1, 5], dtype=np.uint8),
        rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8),
        np.array([9, 2, 6], dtype=np.uint8),
    )


def _write_mnist(folder, arrays, gz=False, overrides=None):
    contents = dict(
        zip(
            data.MNIST_FILES,
            (_idx_images(arrays[0]), _idx_labels(arrays[1]), _idx_images(arrays[2]), _idx_labels(arrays[3])),
            strict=True,
        )
    )
    contents.update(overrides or {})
    for name, raw in contents.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder


def _check_mnist(result, arrays):
    (x_train, y_train), (x_test, y_test) = result
    assert x_train.shape == (5, 16) and x_test.shape == (3, 16)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    np.testing.assert_allclose(x_train, arrays[0].reshape(5, 16) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x_test, arrays[2].reshape(3, 16) / 255.0, rtol=1e-6)
    assert np.array_equal(y_train, [3, 1, 4, 1, 5]) and np.array_equal(y_test, [9, 2, 6])
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_load_mnist_reads_idx_files(tmp_path, mnist_arrays, gz):
    _write_mnist(tmp_path, mnist_arrays, gz=gz)
    _check_mnist(data.load_mnist(tmp_path), mnist_arrays)
    _check_mnist(data.load_mnist(str(tmp_path)), mnist_arrays)


def test_load_mnist_reads_mixed_plain_and_gz(tmp_path, mnist_arrays):
    _write_mnist(tmp_path, mnist_arrays)
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    _check_mnist(data.load_mnist(tmp_path), mnist_arrays)


def test_load_mnist_reads_npz(tmp_path, mnist_arrays):
    path = tmp_path / "mnist.npz"
    x_train, y_train, x_test, y_test = mnist_arrays
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    _check_mnist(data.load_mnist(path), mnist_arrays)


def test_load_mnist_npz_missing_array(tmp_path, mnist_arrays):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=mnist_arrays[0], y_train=mnist_arrays[1], x_test=mnist_arrays[2])
    with pytest.raises(ValueError, match=r"mnist\.npz.*y_test"):
        data.load_mnist(path)


def test_load_mnist_npz_label_count_mismatch(tmp_path, mnist_arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=mnist_arrays[0], y_train=mnist_arrays[1][:4], x_test=mnist_arrays[2], y_test=mnist_arrays[3])
    with pytest.raises(ValueError, match=r"bad\.npz.*y_train"):
        data.load_mnist(path)


def test_load_mnist_npz_named_file_holding_one_array(tmp_path):
    """np.load reads a .npy file (whatever its name) as one array, not an archive: say so, naming the file."""
    path = tmp_path / "mnist.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"mnist\.npz: holds a single array, not an \.npz archive"):
        gn.data.load_mnist(path)


def test_load_mnist_not_an_npz(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_bytes(b"this is not an archive")
    with pytest.raises(ValueError, match=r"notes\.npz"):
        data.load_mnist(path)


def _corrupt_cases(arrays):
    images, labels = arrays[0], arrays[1]
    good = _idx_images(images)
    return {
        "bad magic": ("train-images-idx3-ubyte", struct.pack(">I", 0x00000802) + good[4:], "magic"),
        "labels magic for images": ("train-images-idx3-ubyte", _idx_labels(labels), "magic"),
        "truncated data": ("train-images-idx3-ubyte", good[:-3], "truncated"),
        "truncated header": ("train-labels-idx1-ubyte", struct.pack(">I", 0x00000801), "truncated"),
        "tiny file": ("t10k-labels-idx1-ubyte", b"\x00\x00", "too short"),
        "extra bytes": ("t10k-images-idx3-ubyte", _idx_images(arrays[2]) + b"\x00", "extra"),
        "count mismatch": ("train-labels-idx1-ubyte", _idx_labels(labels[:4]), "5 images.*4 labels"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "bad magic",
        "labels magic for images",
        "truncated data",
        "truncated header",
        "tiny file",
        "extra bytes",
        "count mismatch",
    ],
)
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_load_mnist_corrupt_idx_names_the_file(tmp_path, mnist_arrays, case, gz):
    name, raw, pattern = _corrupt_cases(mnist_arrays)[case]
    _write_mnist(tmp_path, mnist_arrays, gz=gz, overrides={name: raw})
    with pytest.raises(ValueError, match=pattern) as info:
        data.load_mnist(tmp_path)
    assert name in str(info.value)


def test_load_mnist_broken_gzip_names_the_file(tmp_path, mnist_arrays):
    _write_mnist(tmp_path, mnist_arrays, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz"):
        data.load_mnist(tmp_path)


def test_load_mnist_missing_files_are_listed(tmp_path, mnist_arrays):
    _write_mnist(tmp_path, mnist_arrays)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as info:
        data.load_mnist(tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)  # the expected names are listed


def test_load_mnist_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_mnist(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="path"):
        data.load_mnist(3)


def test_load_mnist_garbage_is_named_not_an_mnist_file_without_numpy_advice(tmp_path, mnist_arrays):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x80\x04 this is neither a zip archive nor an IDX file")
    with pytest.raises(ValueError, match=r"garbage\.npz: not an MNIST file: neither an \.npz archive") as info:
        data.load_mnist(garbage)
    assert "allow_pickle" not in str(info.value)
    one_idx = tmp_path / "train-images-idx3-ubyte"
    one_idx.write_bytes(_idx_images(mnist_arrays[0]))
    with pytest.raises(ValueError, match=r"is one IDX file; give the folder holding all four"):
        data.load_mnist(one_idx)
    pickled = tmp_path / "objects.npz"
    x_train, y_train, x_test, _ = mnist_arrays
    np.savez(pickled, x_train=x_train, y_train=y_train, x_test=x_test, y_test=np.array([None, 1, 2], dtype=object))
    with pytest.raises(ValueError, match=r"objects\.npz: holds Python objects \(pickled\), which gpunn never loads"):
        data.load_mnist(pickled)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_load_mnist_refuses_fifos_without_waiting(tmp_path, mnist_arrays):
    fifo = tmp_path / "mnist.npz"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"mnist\.npz is a FIFO \(named pipe\), not a regular file"):
        data.load_mnist(fifo)  # a blocking open would wait for a writer forever
    folder = tmp_path / "idx"
    folder.mkdir()
    _write_mnist(folder, mnist_arrays)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    os.mkfifo(folder / "t10k-labels-idx1-ubyte")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte is a FIFO"):
        data.load_mnist(folder)


def test_load_mnist_npz_array_claiming_more_than_it_holds(tmp_path, mnist_arrays):
    """NumPy allocates an array's claimed size before reading it: a lying header is refused first."""
    path = tmp_path / "lying.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", header.getvalue() + b"\x00" * 100)  # the header holds the magic
        for key, array in zip(("y_train", "x_test", "y_test"), mnist_arrays[1:], strict=True):
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{key}.npy", buffer.getvalue())
    with pytest.raises(ValueError, match=r"lying\.npz: x_train claims shape \(1000000000, 28, 28\)"):
        data.load_mnist(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX: resource limits and sparse files")
def test_load_mnist_reads_an_idx_header_before_the_file(tmp_path, mnist_arrays):
    """A 4 GiB sparse file in the place of the training images is refused after its 16-byte
    header, in a process that could not hold the file in memory."""
    _write_mnist(tmp_path, mnist_arrays)
    with (tmp_path / "train-images-idx3-ubyte").open("wb") as f:
        f.truncate(4 << 30)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from gpunn.train import data\n"
        "try:\n"
        "    data.load_mnist(sys.argv[1])\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    command = [sys.executable, "-c", code, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert "MemoryError" not in result.stderr, result.stderr
    assert "train-images-idx3-ubyte: not an MNIST IDX file of images: its magic number is 0x00000000" in result.stdout


# ----------------------------------------------------------------------------- split


def _labelled(n_per_class=(50, 30, 20, 7)):
    y = np.repeat(np.arange(len(n_per_class)), n_per_class)
    x = np.arange(len(y), dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    return x, y


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.7, 0.3), (0.5, 0.25, 0.25)])
def test_split_disjoint_covering_stratified(fractions):
    x, y = _labelled()
    parts = data.split(x, y, fractions=fractions, seed=4)
    assert len(parts) == len(fractions)
    ids = np.concatenate([px[:, 0] for px, _ in parts]).astype(int)
    assert np.array_equal(np.sort(ids), np.arange(len(y)))  # disjoint and covering
    for px, py in parts:
        assert np.array_equal(y[px[:, 0].astype(int)], py)  # rows stay with their labels
    class_counts = np.bincount(y)
    for f, (_, py) in zip(fractions, parts, strict=True):
        got = np.bincount(py, minlength=len(class_counts))
        assert np.all(np.abs(got - f * class_counts) <= 1.0), (f, got)


def test_split_is_deterministic_and_shuffles_each_part():
    x, y = _labelled()
    a = data.split(x, y, seed=7)
    b = data.split(x, y, seed=7)
    c = data.split(x, y, seed=8)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])
    assert not np.all(np.diff(a[0][1]) >= 0)  # the training part is not grouped by class


def test_split_without_stratify_has_the_rounded_sizes():
    x, y = _labelled()
    parts = data.split(x, y, fractions=(0.6, 0.4), stratify=False, seed=0)
    assert [len(py) for _, py in parts] == [64, 43]  # round(0.6 · 107) = 64
    ids = np.concatenate([px[:, 0] for px, _ in parts]).astype(int)
    assert np.array_equal(np.sort(ids), np.arange(107))


@pytest.mark.parametrize(
    "fractions",
    [(0.5, 0.6), (1.0,), (0.25, 0.25, 0.25, 0.25), (0.0, 1.0), (-0.1, 0.6, 0.5), 0.8],
)
def test_split_rejects_bad_fractions(fractions):
    x, y = _labelled()
    with pytest.raises(ValueError, match="fractions"):
        data.split(x, y, fractions=fractions)


def test_split_rejects_length_mismatch_and_empty_parts():
    x, y = _labelled()
    with pytest.raises(ValueError, match=r"\(107, 3\).*\(106,\)"):
        data.split(x, y[:-1])
    with pytest.raises(ValueError, match="empty"):
        data.split(x[:3], y[:3], fractions=(0.9, 0.1), stratify=False)


def test_split_on_device(device):
    x, y = _labelled()
    parts = data.split(device.send(x), device.send(y), seed=2)
    host = data.split(x, y, seed=2)
    for (dx, dy), (hx, hy) in zip(parts, host, strict=True):
        assert gn.device_of(dx) == device and gn.device_of(dy) == device
        assert np.array_equal(gn.to_numpy(dx), hx) and np.array_equal(gn.to_numpy(dy), hy)


# ----------------------------------------------------------------------------- standardize


def test_standardizer_uses_training_statistics_only(rng):
    x_train = rng.normal(5.0, 3.0, size=(200, 4)).astype(np.float32)
    x_test = rng.normal(-2.0, 0.5, size=(50, 4)).astype(np.float32)
    scaler, train_s, test_s = data.standardize(x_train, x_test)
    mean, std = x_train.astype(np.float64).mean(0), x_train.astype(np.float64).std(0)
    np.testing.assert_allclose(scaler.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(scaler.std, std, rtol=1e-6)
    np.testing.assert_allclose(test_s, (x_test - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(train_s.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_s.std(0), 1.0, atol=1e-5)
    assert abs(test_s.mean()) > 1.0  # the test set was not re-centred on its own statistics
    assert train_s.dtype == np.float32 and test_s.dtype == np.float32


def test_standardizer_constant_features_give_zeros_not_nan():
    x = np.ones((10, 3), dtype=np.float32) * np.array([0.0, 0.1, 7.0], np.float32)
    x[:, 1] += np.arange(10, dtype=np.float32)  # one feature varies
    scaler, xs = data.standardize(x)
    assert np.all(np.isfinite(xs))
    assert np.array_equal(xs[:, [0, 2]], np.zeros((10, 2), np.float32))
    assert scaler.std[0] == 1.0 and scaler.std[2] == 1.0
    digits, _ = data.load_digits()  # the digits' corner pixels are always 0
    assert np.all(np.isfinite(data.standardize(digits)[1]))


def test_standardizer_keeps_float64_and_state_round_trips(rng):
    import json  # noqa: PLC0415

    x = rng.standard_normal((30, 5)) * 4 + 1
    scaler = data.Standardizer().fit(x)
    assert scaler.transform(x).dtype == np.float64
    state = json.loads(json.dumps(scaler.state_dict()))
    again = data.Standardizer.from_state(state)
    np.testing.assert_array_equal(again.mean, scaler.mean)
    np.testing.assert_array_equal(again.std, scaler.std)
    np.testing.assert_array_equal(again.transform(x), scaler.transform(x))


def test_standardizer_validation():
    with pytest.raises(RuntimeError, match="fit"):
        data.Standardizer().transform(np.zeros((2, 3)))
    scaler = data.Standardizer().fit(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        scaler.transform(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="std"):
        data.Standardizer.from_state({"mean": [0.0], "std": [0.0]})


@pytest.mark.parametrize("dtype", [complex, object, "U1"])
def test_standardizer_refuses_data_that_are_not_real_numbers(dtype):
    x = np.ones((3, 2), dtype=dtype)
    with pytest.raises(TypeError, match=rf"^x_train must hold real numbers .*got dtype {np.dtype(dtype)}"):
        data.standardize(x)
    scaler = data.Standardizer().fit(np.ones((3, 2)))
    with pytest.raises(TypeError, match=r"^x must hold real numbers"):
        scaler.transform(x)
    with pytest.raises(TypeError, match=r"^x_train must be a NumPy or CuPy array .*got list"):
        data.standardize([[1.0, 2.0]])


def test_standardizer_on_device(device, rng):
    x = rng.standard_normal((40, 3)).astype(np.float32) * 2 + 3
    scaler, xs = data.standardize(device.send(x))
    assert gn.device_of(xs) == device and xs.dtype == np.float32
    np.testing.assert_allclose(gn.to_numpy(xs), (x - x.mean(0)) / x.std(0), rtol=1e-4, atol=1e-5)
    restored = data.Standardizer.from_state(scaler.state_dict())  # host stats, device data
    np.testing.assert_allclose(gn.to_numpy(restored.transform(device.send(x))), gn.to_numpy(xs), rtol=1e-6)


# ----------------------------------------------------------------------------- one_hot


def test_one_hot_values(device):
    y = device.send(np.array([2, 0, 1, 2]))
    t = data.one_hot(y)
    assert gn.device_of(t) == device and t.dtype == np.float32
    assert np.array_equal(gn.to_numpy(t), np.eye(3, dtype=np.float32)[[2, 0, 1, 2]])
    wide = data.one_hot(y, n_classes=5, dtype="float64")
    assert wide.shape == (4, 5) and wide.dtype == np.float64
    assert np.array_equal(gn.to_numpy(wide).argmax(1), [2, 0, 1, 2])


@pytest.mark.parametrize(
    ("y", "kwargs", "error"),
    [
        (np.array([0, 3]), {"n_classes": 3}, ValueError),
        (np.array([-1, 0]), {}, ValueError),
        (np.array([0.0, 1.0]), {}, TypeError),
        (np.array([[0, 1]]), {}, ValueError),
        (np.array([], dtype=np.int64), {}, ValueError),
        ([0, 1], {}, TypeError),
    ],
)
def test_one_hot_validates_y(y, kwargs, error):
    with pytest.raises(error, match="y"):
        data.one_hot(y, **kwargs)


@pytest.mark.parametrize("dtype", ["complex128", "nonsense", object, None])
def test_one_hot_validates_dtype(dtype):
    with pytest.raises(TypeError, match=r"^dtype must be a real NumPy dtype"):
        data.one_hot(np.array([0, 1]), dtype=dtype)
    assert data.one_hot(np.array([0, 1]), dtype="int8").dtype == np.int8  # integer targets are fine


def test_one_hot_validates_n_classes():
    with pytest.raises(TypeError, match="n_classes"):
        data.one_hot(np.array([0, 1]), n_classes=2.0)


# ----------------------------------------------------------------------------- batches


def _ids(x_batches):
    return np.concatenate([gn.to_numpy(xb)[:, 0] for xb in x_batches]).astype(int)


def test_batches_cover_every_sample_once_per_epoch(device):
    x = device.send(np.arange(23, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32))
    y = device.send(np.arange(23))
    got = list(data.batches(x, y, batch_size=5, seed=1, epoch=0))
    assert [len(yb) for _, yb in got] == [5, 5, 5, 5, 3]
    for xb, yb in got:
        assert gn.device_of(xb) == device and gn.device_of(yb) == device
        assert np.array_equal(gn.to_numpy(xb)[:, 0].astype(int), gn.to_numpy(yb))
    ids = _ids(xb for xb, _ in got)
    assert np.array_equal(np.sort(ids), np.arange(23))
    assert not np.array_equal(ids, np.arange(23))  # shuffled


def test_batches_order_depends_on_seed_and_epoch_only(device):
    x = device.send(np.arange(64, dtype=np.float32)[:, None])
    y = device.send(np.arange(64))
    order = {
        key: _ids(xb for xb, _ in data.batches(x, y, 16, seed=key[0], epoch=key[1])) for key in [(0, 0), (0, 1), (1, 0)]
    }
    again = _ids(xb for xb, _ in data.batches(x, y, 16, seed=0, epoch=1))
    assert np.array_equal(order[(0, 1)], again)  # a resumed run sees the same order
    assert not np.array_equal(order[(0, 0)], order[(0, 1)])
    assert not np.array_equal(order[(0, 0)], order[(1, 0)])
    host = np.random.default_rng([0, 1]).permutation(64)
    assert np.array_equal(order[(0, 1)], host)  # the documented host permutation


def test_batches_drop_last(device):
    x, y = device.send(np.zeros((10, 3), np.float32)), device.send(np.zeros(10, np.int64))
    assert [len(yb) for _, yb in data.batches(x, y, 4, drop_last=True)] == [4, 4]
    assert [len(yb) for _, yb in data.batches(x, y, 4, shuffle=False, drop_last=True)] == [4, 4]
    assert [len(yb) for _, yb in data.batches(x, y, 4)] == [4, 4, 2]
    assert list(data.batches(x, y, 11, drop_last=True)) == []


def test_batches_without_shuffle_are_views_in_order(device):
    xp = device.xp
    x = device.send(np.arange(14, dtype=np.float32).reshape(7, 2))
    y = device.send(np.arange(7))
    got = list(data.batches(x, y, 3, shuffle=False))
    assert [gn.to_numpy(yb).tolist() for _, yb in got] == [[0, 1, 2], [3, 4, 5], [6]]
    for xb, _ in got:
        assert xp.shares_memory(xb, x)  # a slice, not a copy


def test_batches_validate_arguments(device):
    x, y = device.send(np.zeros((6, 2), np.float32)), device.send(np.zeros(6, np.int64))
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(x, y, 0)
    with pytest.raises(TypeError, match="batch_size"):
        data.batches(x, y, 2.0)
    with pytest.raises(TypeError, match="batch_size"):
        data.batches(x, y, True)
    with pytest.raises(ValueError, match=r"\(6, 2\).*\(5,\)"):
        data.batches(x, y[:5], 2)


@pytest.mark.gpu
def test_batches_refuse_arrays_on_different_devices(gpu):
    x = gpu.send(np.zeros((6, 2), np.float32))
    with pytest.raises(gn.DeviceMismatchError, match="y"):
        data.batches(x, np.zeros(6, np.int64), 2)


def test_batches_device_mismatch_is_checked_without_a_gpu(monkeypatch):
    x, y = np.zeros((6, 2), np.float32), np.zeros(6, np.int64)
    real = batching.device_of
    monkeypatch.setattr(batching, "device_of", lambda a: gn.Device("cuda", 0) if a is y else real(a))
    with pytest.raises(gn.DeviceMismatchError, match="cuda:0"):
        data.batches(x, y, 2)


def test_load_mnist_reads_an_empty_test_set(tmp_path, mnist_arrays):
    empty = (np.zeros((0, 4, 4), np.uint8), np.zeros(0, np.uint8))
    _write_mnist(tmp_path, (*mnist_arrays[:2], *empty))
    (x_train, _), (x_test, y_test) = data.load_mnist(tmp_path)
    assert x_train.shape == (5, 16) and x_test.shape == (0, 16) and y_test.shape == (0,)


@pytest.mark.parametrize("damage", ["encrypted", "unknown compression"])
def test_load_mnist_names_an_npz_that_zipfile_cannot_read(tmp_path, mnist_arrays, damage):
    """zipfile raises RuntimeError for an encrypted member and NotImplementedError for a
    compression it lacks; both become the ValueError that names the file."""
    path = tmp_path / "mnist.npz"
    x_train, y_train, x_test, y_test = mnist_arrays
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    raw = bytearray(path.read_bytes())
    for signature in (b"PK\x03\x04", b"PK\x01\x02"):  # every local and central header
        start = 0
        while (at := raw.find(signature, start)) >= 0:
            flags_at = at + (6 if signature == b"PK\x03\x04" else 8)
            if damage == "encrypted":
                raw[flags_at] |= 0x01
            else:
                raw[flags_at + 2 : flags_at + 4] = (9).to_bytes(2, "little")  # method 9: deflate64
            start = at + 4
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"^{str(path)!s}: not a readable \.npz archive"):
        data.load_mnist(path)


def test_split_keeps_missing_values_in_x_for_imputing_after_it():
    pd = pytest.importorskip("pandas")
    values = np.arange(40, dtype=float).reshape(10, 4)
    values[3, 1] = np.nan
    y = np.arange(10) % 2
    from_frame = data.split(pd.DataFrame(values), y, fractions=(0.6, 0.4), seed=0)
    from_array = data.split(values, y, fractions=(0.6, 0.4), seed=0)
    for (a, ya), (b, yb) in zip(from_frame, from_array, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)


def test_split_takes_a_dataframe_by_rows():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(np.arange(100).reshape(10, 10))
    y = np.arange(10) % 2
    (a, ya), (b, yb) = data.split(frame, y, fractions=(0.6, 0.4), seed=0)
    assert a.shape == (6, 10) and b.shape == (4, 10)
    for part, labels in ((a, ya), (b, yb)):
        np.testing.assert_array_equal(part[:, 0] // 10 % 2, labels)  # each row keeps its own label
