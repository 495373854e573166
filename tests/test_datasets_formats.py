"""The benchmark data sets from their official files (issue 20): 3D Shapes (h5), MPI3D (npz),
SmallNORB (NORB binary matrices), Cars3D (.mat), MNIST (IDX), CelebA (aligned folder + attribute
list) and the color/noisy/scream dSprites.

Every format is tested on a tiny file written here in exactly the official layout (the same keys,
dtypes, headers and variable names, with fewer images); each image encodes its own factors in its
pixels, so a test can check that every image landed with its labels. The writers are importable
(``from test_datasets_formats import write_mpi3d``) by the other test_datasets_* files.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gatedvae.cli import main
from gatedvae.config import DataConfig, apply_overrides
from gatedvae.data import build_dataset
from gatedvae.data import mpi3d as mpi3d_mod
from gatedvae.data import shapes3d as shapes3d_mod
from gatedvae.data import smallnorb as norb_mod
from gatedvae.data.cache import MemmapStore
from gatedvae.data.cars3d import load_cars3d
from gatedvae.data.celeba import load_celeba
from gatedvae.data.dsprites import DSPRITES_SPACE
from gatedvae.data.factors import FactorSpace
from gatedvae.data.mnist import load_mnist, read_idx
from gatedvae.data.mpi3d import load_mpi3d
from gatedvae.data.shapes3d import SHAPES3D_SPACE, load_shapes3d
from gatedvae.data.smallnorb import NORB_FILES, load_smallnorb
from gatedvae.errors import DataError

h5py = pytest.importorskip("h5py")


def one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)


def data(name: str, **kw) -> DataConfig:
    return apply_overrides(DataConfig(), [f"name={name}", *(f"{k}={v}" for k, v in kw.items())])


# ====================================================================== official-layout writers
def code_images(codes: np.ndarray, shape=(64, 64, 3)) -> np.ndarray:
    """uint8 images ``(N, *shape)`` whose every pixel of channel c is ``codes[:, c]`` (constant
    images survive any resize unchanged)."""
    codes = np.asarray(codes, dtype=np.uint8)  # (N, C)
    out = np.empty((len(codes), *shape), dtype=np.uint8)
    if len(shape) == 3:  # HWC
        out[:] = codes[:, None, None, :]
    else:
        out[:] = codes[:, :1, None]
    return out


def write_shapes3d(path: Path, classes: np.ndarray, space: FactorSpace = SHAPES3D_SPACE) -> np.ndarray:
    """``3dshapes.h5`` as published: ``images`` uint8 (N, 64, 64, 3), ``labels`` float64 (N, 6)
    (gzip-compressed chunks); image i's channels are (i % 256, i // 256, 7)."""
    n = len(classes)
    idx = np.arange(n)
    images = code_images(np.column_stack([idx % 256, idx // 256, np.full(n, 7)]))
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(min(n, 8), 64, 64, 3), compression="gzip")
        f.create_dataset("labels", data=space.to_values(classes).astype(np.float64))
    return images


def write_npz_images(path: Path, images: np.ndarray, compressed: bool, key: str = "images") -> None:
    (np.savez_compressed if compressed else np.savez)(path, **{key: images})


def mpi3d_codes(n: int) -> np.ndarray:
    idx = np.arange(n)
    return np.column_stack([idx % 256, idx // 256, np.full(n, 3)])


TINY_MPI3D = FactorSpace(mpi3d_mod.MPI3D_SPACE.names, (2, 2, 1, 1, 2, 3, 2))  # 48 images


def write_mpi3d(path: Path, n: int, compressed: bool = True) -> np.ndarray:
    """``mpi3d_<variant>.npz`` as published: one array ``images`` uint8 (N, 64, 64, 3)."""
    images = code_images(mpi3d_codes(n))
    write_npz_images(path, images, compressed)
    return images


def norb_matrix(arr: np.ndarray, magic: int) -> bytes:
    """A NORB binary matrix: int32 magic, int32 ndim, max(3, ndim) int32 dims, little-endian data."""
    dims = list(arr.shape) + [1] * max(0, 3 - arr.ndim)
    head = struct.pack("<ii", magic, arr.ndim) + struct.pack(f"<{len(dims)}i", *dims)
    return head + np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()


def write_norb(folder: Path, split: str, factors: np.ndarray, gz: bool = True) -> np.ndarray:
    """The three files of one half; image i of the left camera has pixel value 1 + i (the right
    camera's 200 + i % 50). ``factors``: (n, 5) category, instance, elevation, azimuth class, lighting."""
    n = len(factors)
    dat = np.empty((n, 2, 96, 96), dtype=np.uint8)
    dat[:, 0] = (1 + np.arange(n))[:, None, None]
    dat[:, 1] = (200 + np.arange(n) % 50)[:, None, None]
    info = np.column_stack([factors[:, 1], factors[:, 2], factors[:, 3] * 2, factors[:, 4]]).astype(np.int32)
    parts = {
        "dat": norb_matrix(dat, 0x1E3D4C55),
        "cat": norb_matrix(factors[:, 0].astype(np.int32), 0x1E3D4C54),
        "info": norb_matrix(info, 0x1E3D4C54),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for part, raw in parts.items():
        name = NORB_FILES[split].format(part)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw, compresslevel=1))
        else:
            (folder / name).write_bytes(raw)
    return dat


def write_cars3d(folder: Path, n_obj: int, with_list: bool = True) -> None:
    """``car_NNN_mesh.mat`` files with ``im`` uint8 (128, 128, 3, 24, 4) and ``mask``; image
    (azimuth a, elevation e) of car o has channels (10 a, 60 e, 100 o)."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for o in range(n_obj):
        im = np.empty((128, 128, 3, 24, 4), dtype=np.uint8)
        im[:, :, 0] = (10 * np.arange(24))[None, None, :, None]
        im[:, :, 1] = (60 * np.arange(4))[None, None, None, :]
        im[:, :, 2] = 100 * o
        name = f"car_{o + 1:03d}_mesh"
        savemat(folder / f"{name}.mat", {"im": im, "mask": np.ones((128, 128, 24, 4), dtype=np.uint8)})
        names.append(name)
    if with_list:
        (folder / "list.txt").write_text("\n".join(reversed(names)) + "\n")  # list.txt's order wins


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file: 0, 0, type code 0x08 (unsigned byte), ndim, big-endian int32 dims, data."""
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_mnist(folder: Path, split: str, labels: np.ndarray, gz: bool = True) -> np.ndarray:
    prefix = {"train": "train", "test": "t10k"}[split]
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    images[:] = (labels * 20 + 5)[:, None, None]
    folder.mkdir(parents=True, exist_ok=True)
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels.astype(np.uint8))):
        raw = idx_bytes(arr)
        name = f"{prefix}-{kind}-ubyte"
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw, compresslevel=1))
        else:
            (folder / name).write_bytes(raw)
    return images


CELEBA_ATTRS = "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young".split()  # noqa: E501


def write_celeba(root: Path, n: int) -> np.ndarray:
    """``img_align_celeba/000001.jpg ...`` (178x218, grey level 20 i + 10 inside the central 100 px,
    0 outside), ``list_attr_celeba.txt`` (count, names, rows of -1/1 with the official double spaces)
    and ``list_eval_partition.txt``. Returns the attributes as (n, 40) of -1/1."""
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    attrs = rng.choice([-1, 1], size=(n, 40))
    lines = [str(n), " ".join(CELEBA_ATTRS) + " "]
    parts = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        px = np.zeros((218, 178, 3), dtype=np.uint8)
        px[59:159, 39:139] = 20 * i + 10
        Image.fromarray(px).save(folder / name, quality=95)
        lines.append(name + " " + " ".join(f"{v:2d}" for v in attrs[i]))
        parts.append(f"{name} {i % 3}")
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return attrs


# ====================================================================== 3D Shapes
def test_shapes3d_subset_file_loads_with_its_labels(tmp_path):
    rng = np.random.default_rng(1)
    classes = SHAPES3D_SPACE.sample(40, rng)
    images = write_shapes3d(tmp_path / "3dshapes.h5", classes)
    for mode in ("memory", "mmap"):
        ds = load_shapes3d(tmp_path / "3dshapes.h5", mode, data_dir_setting=str(tmp_path / "d"))
        assert not ds.is_grid and ds.image_shape == (3, 64, 64) and len(ds) == 40
        np.testing.assert_array_equal(ds.factors, classes)
        got = ds.store.gather_uint8(np.arange(40)).numpy()  # (40, 3, 64, 64)
        np.testing.assert_array_equal(got, images.transpose(0, 3, 1, 2))
    assert isinstance(ds.store, MemmapStore)


def test_shapes3d_complete_file_is_a_grid(tmp_path, monkeypatch):
    tiny = FactorSpace(
        SHAPES3D_SPACE.names,
        (2, 2, 1, 2, 1, 3),
        [v[:s] for v, s in zip(SHAPES3D_SPACE.values, (2, 2, 1, 2, 1, 3), strict=True)],
    )
    monkeypatch.setattr(shapes3d_mod, "SHAPES3D_SPACE", tiny)
    classes = tiny.to_factors(np.arange(len(tiny)))
    write_shapes3d(tmp_path / "3dshapes.h5", classes, tiny)
    ds = build_dataset(data("shapes3d", path=tmp_path, data_dir=tmp_path / "d"))
    assert ds.is_grid and len(ds) == 24 and isinstance(ds.store, MemmapStore)
    got = ds.store.gather_uint8(np.array([5, 17])).numpy()[:, 0, 0, 0]
    np.testing.assert_array_equal(got, [5, 17])
    strided = build_dataset(data("shapes3d", path=tmp_path, data_dir=tmp_path / "d", **{"stride.orientation": 2}))
    assert strided.is_grid and len(strided) == 16
    want = ds.index_of(strided.factors * np.array([1, 1, 1, 1, 1, 2]))  # sub-grid classes -> full-grid ones
    np.testing.assert_array_equal(strided.store.gather_uint8(np.arange(16)).numpy()[:, 0, 0, 0], want)


def test_shapes3d_bad_files_are_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "3dshapes.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(DataError) as exc:
        load_shapes3d(bad)
    one_line(exc, "labels", "download")
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataError) as exc:
        load_shapes3d(bad)
    one_line(exc, "HDF5")
    with h5py.File(bad, "w") as f:
        f.create_dataset("images", data=np.zeros((1, 64, 64, 3), np.uint8))
        f.create_dataset("labels", data=np.array([[0.05, 0, 0, 0.75, 0, 0]]))
    with pytest.raises(DataError) as exc:
        load_shapes3d(bad)
    one_line(exc, "floor_hue", "official values")
    with pytest.raises(DataError) as exc:
        build_dataset(data("shapes3d", data_dir=tmp_path / "none"))
    one_line(exc, "does not exist", "gatedvae data download shapes3d", "storage.googleapis.com")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(DataError) as exc:
        load_shapes3d(bad)
    one_line(exc, "pip install 'gatedvae[h5]'")


# ====================================================================== MPI3D
@pytest.mark.parametrize("compressed", [True, False])
def test_mpi3d_npz_streams_into_the_cache(tmp_path, compressed):
    n = len(TINY_MPI3D)
    images = write_mpi3d(tmp_path / "mpi3d_real.npz", n, compressed)
    ds = load_mpi3d(tmp_path / "mpi3d_real.npz", "real", "mmap", str(tmp_path / "d"), space=TINY_MPI3D)
    assert ds.is_grid and len(ds) == n and isinstance(ds.store, MemmapStore)
    assert ds.store.path.name == "mpi3d-real-v1.npy"
    idx = np.array([47, 0, 13, 13])
    np.testing.assert_array_equal(ds.store.gather_uint8(idx).numpy(), images[idx].transpose(0, 3, 1, 2))
    x = ds.images(idx)
    assert x.dtype == torch.float32 and x.shape == (4, 3, 64, 64)
    np.testing.assert_allclose(x[:, 0, 0, 0].numpy(), images[idx, 0, 0, 0] / 255.0)


def test_mpi3d_registry_describe_preview(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mpi3d_mod, "MPI3D_SPACE", TINY_MPI3D)
    folder = tmp_path / "mpi3d"
    folder.mkdir()
    write_mpi3d(folder / "mpi3d_toy.npz", len(TINY_MPI3D))
    monkeypatch.setenv("GATEDVAE_DATA", str(tmp_path))  # the download's default place
    assert main(["data", "describe", "mpi3d", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "mpi3d: 48 images of 3x64x64" in out and "memory-mapped" in out and "horizontal_axis" in out
    png = tmp_path / "p.png"
    assert main(["data", "preview", "mpi3d", "options.variant=toy", "--out", str(png), "--quiet"]) == 0
    assert Image.open(png).size[0] > 100
    assert main(["data", "describe", "mpi3d", "options.variant=real", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MPI3D-real file") and "gatedvae data download mpi3d_real" in err and "\n" not in err


def test_mpi3d_wrong_length_and_truncation(tmp_path):
    write_mpi3d(tmp_path / "short.npz", 10)
    with pytest.raises(DataError) as exc:
        load_mpi3d(tmp_path / "short.npz", space=TINY_MPI3D)
    one_line(exc, "10 images", "48", "truncated")
    write_mpi3d(tmp_path / "ok.npz", 48, compressed=False)
    raw = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as exc:
        load_mpi3d(tmp_path / "cut.npz", space=TINY_MPI3D, data_dir_setting=str(tmp_path / "d"))
    one_line(exc, "cut.npz")
    write_npz_images(tmp_path / "other.npz", np.zeros((48, 64, 64, 3), np.uint8), False, key="imgs")
    with pytest.raises(DataError) as exc:
        load_mpi3d(tmp_path / "other.npz", space=TINY_MPI3D)
    one_line(exc, "no array 'images'", "imgs")
    assert not list((tmp_path / "d").glob("**/*.npy")) if (tmp_path / "d").exists() else True


# ====================================================================== SmallNORB
def _norb_rows(space: FactorSpace, instances: list[int], rng) -> np.ndarray:
    grid = space.to_factors(np.arange(len(space)))
    rows = grid[np.isin(grid[:, 1], instances)]
    return rows[rng.permutation(len(rows))]


def test_smallnorb_both_halves_make_the_grid(tmp_path, monkeypatch):
    tiny = FactorSpace(norb_mod.NORB_SPACE.names, (2, 2, 2, 3, 1))  # 24 images, 12 per half
    monkeypatch.setattr(norb_mod, "NORB_SPACE", tiny)
    rng = np.random.default_rng(0)
    train, test = _norb_rows(tiny, [1], rng), _norb_rows(tiny, [0], rng)
    write_norb(tmp_path, "train", train, gz=True)
    write_norb(tmp_path, "test", test, gz=False)
    ds = build_dataset(data("smallnorb", path=tmp_path))
    assert ds.is_grid and len(ds) == 24 and ds.image_shape == (1, 64, 64)
    file_rows = np.concatenate([train, test])  # image k of the files has pixel value 1 + (k % 12)
    pixel = ds.store.gather_uint8(np.arange(24)).numpy()[:, 0, 0, 0]
    for g in range(24):
        k = int(np.flatnonzero((file_rows == ds.factors[g]).all(axis=1))[0])
        assert pixel[g] == 1 + k % 12
    right = build_dataset(
        data("smallnorb", path=tmp_path, **{"options.camera": "right", "options.split": "train", "image_size": 32})
    )
    assert not right.is_grid and len(right) == 12 and right.image_shape == (1, 32, 32)
    np.testing.assert_array_equal(right.factors, train)
    np.testing.assert_array_equal(right.store.gather_uint8(np.arange(12)).numpy()[:, 0, 5, 5], 200 + np.arange(12))


def test_smallnorb_headers_are_checked(tmp_path):
    rows = np.array([[0, 4, 1, 2, 3], [4, 9, 8, 17, 5]])
    write_norb(tmp_path, "test", rows, gz=False)
    ds = load_smallnorb(tmp_path, "test")
    np.testing.assert_array_equal(ds.factors, rows)
    assert ds.factor_space.values[3][17] == 340.0 and ds.factor_space.values[2][8] == 70.0
    cat = tmp_path / NORB_FILES["test"].format("cat")
    cat.write_bytes(b"\x00\x01\x02\x03" + cat.read_bytes()[4:])
    with pytest.raises(DataError) as exc:
        load_smallnorb(tmp_path, "test")
    one_line(exc, "not a NORB binary matrix")
    write_norb(tmp_path, "test", rows, gz=False)
    dat = tmp_path / NORB_FILES["test"].format("dat")
    dat.write_bytes(dat.read_bytes()[:-100])
    with pytest.raises(DataError) as exc:
        load_smallnorb(tmp_path, "test")
    one_line(exc, "truncated")
    with pytest.raises(DataError) as exc:
        load_smallnorb(tmp_path, "train")
    one_line(exc, "training-dat.mat", "gatedvae data download smallnorb")


# ====================================================================== Cars3D
def test_cars3d_mat_files_make_the_grid(tmp_path):
    write_cars3d(tmp_path / "data" / "cars", 2)
    ds = load_cars3d(tmp_path)  # finds data/cars/ and reads list.txt (reversed order)
    assert ds.is_grid and len(ds) == 4 * 24 * 2 and ds.image_shape == (3, 64, 64)
    assert ds.factor_space.names == ("elevation", "azimuth", "object")
    px = ds.store.gather_uint8(np.arange(len(ds))).numpy()[:, :, 10, 10].astype(int)  # (N, 3)
    f = ds.factors
    np.testing.assert_array_equal(px[:, 0], 10 * f[:, 1])
    np.testing.assert_array_equal(px[:, 1], 60 * f[:, 0])
    np.testing.assert_array_equal(px[:, 2], 100 * (1 - f[:, 2]))  # list.txt put car 2 first
    assert "2 cars" in ds.notes[0]
    (tmp_path / "data" / "cars" / "car_001_mesh.mat").write_bytes(b"garbage")
    with pytest.raises(DataError) as exc:
        load_cars3d(tmp_path)
    one_line(exc, "car_001_mesh.mat", "MATLAB")


# ====================================================================== MNIST
def test_mnist_idx_gzipped_or_not(tmp_path):
    lab_train = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    lab_test = np.array([0, 7])
    write_mnist(tmp_path, "train", lab_train, gz=True)
    write_mnist(tmp_path, "test", lab_test, gz=False)
    ds = build_dataset(data("mnist", path=tmp_path))
    assert ds.image_shape == (1, 28, 28) and len(ds) == 8
    np.testing.assert_array_equal(ds.factors[:, 0], lab_train)
    np.testing.assert_array_equal(ds.store.gather_uint8(np.arange(8)).numpy()[:, 0, 3, 3], lab_train * 20 + 5)
    both = build_dataset(data("mnist", path=tmp_path, **{"options.split": "both", "options.side": 64}))
    assert both.image_shape == (1, 64, 64) and len(both) == 10
    np.testing.assert_array_equal(both.factors[:, 0], np.concatenate([lab_train, lab_test]))
    np.testing.assert_array_equal(
        both.store.gather_uint8(np.arange(10)).numpy()[:, 0, 30, 30], both.factors[:, 0] * 20 + 5
    )
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and struct.unpack(">3i", raw[4:16]) == (2, 28, 28)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-5])
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path, "test")
    one_line(exc, "truncated")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x07\x03" + raw[4:])
    with pytest.raises(DataError) as exc:
        read_idx(tmp_path / "t10k-images-idx3-ubyte")
    one_line(exc, "not an IDX file")


# ====================================================================== CelebA
def test_celeba_attributes_are_weak_labels(tmp_path, capsys):
    attrs = write_celeba(tmp_path, 6)
    ds = load_celeba(tmp_path, image_size=32, color="rgb", crop=148, mode="mmap", data_dir_setting=str(tmp_path / "d"))
    assert len(ds) == 6 and ds.image_shape == (3, 32, 32) and ds.factor_space.num_factors == 0
    assert ds.weak_names[0] == "5_o_Clock_Shadow" and ds.weak_names[-1] == "Young" and len(ds.weak_names) == 40
    np.testing.assert_array_equal(ds.weak, (attrs > 0).astype(float))
    centre = ds.store.gather_uint8(np.arange(6)).numpy()[:, 0, 16, 16].astype(int)
    np.testing.assert_allclose(centre, 20 * np.arange(6) + 10, atol=3)  # JPEG
    test = load_celeba(tmp_path, image_size=16, split="test", mode="memory")
    assert len(test) == 2  # images 3 and 6 (partition 2)
    np.testing.assert_array_equal(test.weak, (attrs[[2, 5]] > 0).astype(float))
    assert main(["data", "describe", "celeba", f"path={tmp_path}", f"data_dir={tmp_path / 'd'}", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "weak   Smiling" in out and "no ground-truth factors" in out
    lines = (tmp_path / "list_attr_celeba.txt").read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0]
    (tmp_path / "list_attr_celeba.txt").write_text("\n".join(lines))
    with pytest.raises(DataError) as exc:
        load_celeba(tmp_path, mode="memory")
    one_line(exc, "line 5", "39 values", "expected 40")


# ====================================================================== dSprites variants
STRIDE = {"posX": 8, "posY": 8, "orientation": 10, "scale": 3}


def _variant(name: str, **kw) -> object:
    overrides = {f"stride.{k}": v for k, v in STRIDE.items()} | kw
    return build_dataset(data(name, **overrides))


def test_color_and_noisy_dsprites(tmp_path):
    base = build_dataset(data("dsprites", **{f"stride.{k}": v for k, v in STRIDE.items()}))
    idx = np.arange(0, len(base), 7)
    mask = base.images(idx).numpy()  # (B, 1, 64, 64)
    color = _variant("color_dsprites")
    x = color.images(idx).numpy()  # (B, 3, 64, 64)
    assert color.image_shape == (3, 64, 64) and color.factor_space == base.factor_space and color.is_grid
    assert (x[np.broadcast_to(mask == 0, x.shape)] == 0).all()
    on = x.transpose(1, 0, 2, 3)[:, mask[:, 0] > 0]  # (3, pixels)
    assert on.min() >= 0.5 and on.max() <= 1.0
    per_image = x.reshape(len(idx), 3, -1).max(axis=2)  # (B, 3) each image one colour
    assert len(np.unique(per_image.round(4), axis=0)) > len(idx) // 2
    np.testing.assert_array_equal(x, _variant("color_dsprites").images(idx).numpy())  # seeded
    assert not np.array_equal(x, _variant("color_dsprites", seed=1).images(idx).numpy())
    noisy = _variant("noisy_dsprites")
    y = noisy.images(idx).numpy()
    assert (y[np.broadcast_to(mask > 0, y.shape)] == 1.0).all()
    back = y[np.broadcast_to(mask == 0, y.shape)]
    assert 0.45 < back.mean() < 0.55 and back.min() >= 0 and back.max() < 1
    # the same image in two different strides carries the same noise (noise is per grid index)
    other = build_dataset(
        data("noisy_dsprites", **{"stride.posX": 16, "stride.posY": 8, "stride.orientation": 10, "stride.scale": 3})
    )
    f = other.factors[5:6]
    same = noisy.factor_space.to_index(np.column_stack([f[:, :4], f[:, 4:5] * 2, f[:, 5:]]))
    np.testing.assert_array_equal(other.images(np.array([5])).numpy(), noisy.images(same).numpy())


def test_scream_dsprites_uses_the_given_texture(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "tex.png")
    with pytest.raises(DataError) as exc:
        _variant("scream_dsprites", data_dir=tmp_path / "none")
    one_line(exc, "texture", "gatedvae data download scream")
    ds = _variant("scream_dsprites", **{"options.texture": tmp_path / "tex.png"})
    base = build_dataset(data("dsprites", **{f"stride.{k}": v for k, v in STRIDE.items()}))
    idx = np.array([0, 11, 50])
    x, mask = ds.images(idx), base.images(idx)
    assert x.shape == (3, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
    # sprite pixels are the negative of the (tinted) background patch, which lies in [u/2, (1+u)/2]
    p = ds.store.params[torch.as_tensor(idx)]
    for b in range(3):
        u = p[b, 2:].numpy()
        back = x[b].numpy()[:, mask[b, 0].numpy() == 0]  # (3, pixels)
        assert (back >= u[:, None] / 2 - 1e-6).all() and (back <= (1 + u[:, None]) / 2 + 1e-6).all()
    (tmp_path / "small.png").write_bytes(b"")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DataError) as exc:
        _variant("scream_dsprites", **{"options.texture": tmp_path / "small.png"})
    one_line(exc, "larger than 64x64")


def test_variants_describe_and_preview(tmp_path, capsys):
    strides = [f"stride.{k}={v}" for k, v in STRIDE.items()]
    assert main(["data", "describe", "color_dsprites", *strides, "--quiet"]) == 0
    assert "color_dsprites: 384 images of 3x64x64" in capsys.readouterr().out
    png = tmp_path / "n.png"
    assert main(["data", "preview", "noisy_dsprites", *strides, "--out", str(png), "--quiet"]) == 0
    assert png.stat().st_size > 1000


# ====================================================================== every registered benchmark set
def test_every_new_dataset_is_listed_with_its_factors(capsys):
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    for name in (
        "shapes3d",
        "mpi3d",
        "smallnorb",
        "cars3d",
        "mnist",
        "celeba",
        "color_dsprites",
        "noisy_dsprites",
        "scream_dsprites",
    ):
        assert name in out
    assert "floor_hue (10)" in out and "object_color (6)" in out


def test_dsprites_space_is_unchanged_by_the_variants():
    assert DSPRITES_SPACE.sizes == (1, 3, 6, 40, 32, 32)


def test_sklearn_digits_export_reads_as_mnist(tmp_path):
    """The stand-in for MNIST of the indicative Table 1 study: scikit-learn's digits as IDX files."""
    from sklearn.datasets import load_digits

    from gatedvae.data.mnist import export_sklearn_digits

    folder = export_sklearn_digits(tmp_path / "mnist")
    train, test = load_mnist(folder, "train"), load_mnist(folder, "test")
    assert (len(train), len(test)) == (1500, 297) and train.image_shape == (1, 28, 28)
    np.testing.assert_array_equal(np.concatenate([train.factors, test.factors])[:, 0], load_digits().target)
    x = train.store.gather_uint8(np.arange(len(train))).numpy()
    assert x[:, :, :4].max() == 0 and x[:, :, 24:].max() == 0 and x.max() == 255  # centred 20x20 digits
