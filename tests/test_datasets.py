"""Datasets: dSprites (procedural and the official .npz), CorrelatedEllipses, bring-your-own
images, and the preview figure.

The default suite stays small (strided grids, a few thousand ellipses); the full 737,280-image
generation, its cache and a full official-format file run under ``-m slow``.
"""

from __future__ import annotations

import csv
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gatedvae.config import Config, DataConfig, apply_overrides, from_dict, to_dict
from gatedvae.data import DATASETS, Option, build_dataset, register_dataset, validate_data_config
from gatedvae.data.base import FactorDataset, PackedBinaryStore, Uint8Store
from gatedvae.data.dsprites import (
    CACHE_FILE,
    DSPRITES_SPACE,
    SHAPE_NAMES,
    SPRITE,
    _packed_block,
    load_dsprites_npz,
    make_dsprites,
    render_dsprites,
    sprite_bank,
)
from gatedvae.data.ellipses import bin_centres, make_ellipses, quantise, render_ellipses
from gatedvae.data.factors import FactorSpace
from gatedvae.data.images import load_images
from gatedvae.data.preview import preview, traversal_indices
from gatedvae.errors import ConfigError, DataError

SIZES = (1, 3, 6, 40, 32, 32)


def assert_one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and msg, msg
    for f in fragments:
        assert f in msg, (f, msg)


# ====================================================================== dSprites layout
def test_dsprites_space_matches_official_layout():
    assert DSPRITES_SPACE.names == ("color", "shape", "scale", "orientation", "posX", "posY")
    assert DSPRITES_SPACE.sizes == SIZES
    assert len(DSPRITES_SPACE) == 737_280
    assert SHAPE_NAMES == ("square", "ellipse", "heart")
    v = DSPRITES_SPACE.values
    np.testing.assert_array_equal(v[0], [1.0])
    np.testing.assert_array_equal(v[1], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(v[2], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    # the issue said [0, 2pi); the official latents_values include the endpoint 2pi
    np.testing.assert_allclose(v[3], np.linspace(0, 2 * np.pi, 40))
    assert v[3][-1] == pytest.approx(2 * np.pi)
    np.testing.assert_allclose(v[3][1], 0.16110732, atol=1e-8)  # official second orientation
    np.testing.assert_allclose(v[4], np.linspace(0, 1, 32))
    np.testing.assert_allclose(v[5], np.linspace(0, 1, 32))


def test_dsprites_full_grid_index_is_unravel_index():
    index = np.arange(len(DSPRITES_SPACE), dtype=np.int64)  # (737280,)
    want = np.stack(np.unravel_index(index, SIZES), axis=-1)  # (737280, 6)
    got = DSPRITES_SPACE.to_factors(index)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(DSPRITES_SPACE.to_index(want), index)
    # posY is the fastest axis, then posX, orientation, scale, shape
    np.testing.assert_array_equal(got[1], [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(got[32], [0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(got[1024], [0, 0, 0, 1, 0, 0])


# ====================================================================== dSprites rendering
def test_render_is_deterministic_and_binary():
    rng = np.random.default_rng(0)
    factors = DSPRITES_SPACE.sample(300, rng)
    a = render_dsprites(factors)
    b = render_dsprites(factors.copy())
    assert a.shape == (300, 64, 64) and a.dtype == bool
    np.testing.assert_array_equal(a, b)
    # rendering one at a time gives the same images as a batch
    for i in range(0, 300, 37):
        np.testing.assert_array_equal(render_dsprites(factors[i : i + 1])[0], a[i])
    assert a.reshape(300, -1).any(axis=1).all()  # no empty image


def test_render_axes_x_is_column_y_is_row():
    f = np.array([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 31, 0], [0, 0, 0, 0, 0, 31]])
    im = render_dsprites(f)
    col = lambda m: np.nonzero(m.any(axis=0))[0].mean()  # noqa: E731
    row = lambda m: np.nonzero(m.any(axis=1))[0].mean()  # noqa: E731
    assert col(im[1]) - col(im[0]) == pytest.approx(31)  # posX moves along columns
    assert row(im[1]) == pytest.approx(row(im[0]))
    assert row(im[2]) - row(im[0]) == pytest.approx(31)  # posY moves along rows
    assert col(im[2]) == pytest.approx(col(im[0]))


def test_sprites_stay_inside_the_image():
    bank = sprite_bank()  # (3, 6, 40, S, S)
    assert bank.shape == (3, 6, 40, SPRITE, SPRITE)
    # a blank border in the sprite canvas: even the largest rotated sprite is whole at posX/posY 0 and 31
    assert not bank[..., 0, :].any() and not bank[..., -1, :].any()
    assert not bank[..., :, 0].any() and not bank[..., :, -1].any()
    corners = np.array(
        [
            [0, s, k, o, x, y]
            for s in range(3)
            for k in range(6)
            for o in range(0, 40, 3)
            for x in (0, 31)
            for y in (0, 31)
        ]
    )
    im = render_dsprites(corners)
    np.testing.assert_array_equal(
        im.sum(axis=(1, 2)), bank[corners[:, 1], corners[:, 2], corners[:, 3]].sum(axis=(1, 2))
    )


def test_square_is_about_20px_and_ellipse_elongated():
    bank = sprite_bank()
    square = bank[0, 5, 0]
    assert np.nonzero(square.any(axis=0))[0].size == 20 and np.nonzero(square.any(axis=1))[0].size == 20
    ellipse = bank[1, 5, 0]
    w, h = ellipse.any(axis=0).sum(), ellipse.any(axis=1).sum()
    assert 1.7 < w / h < 2.3
    heart = bank[2, 5, 0]
    # a heart: two lobes at the top (the top row of the sprite has two runs), a point at the bottom
    rows = np.nonzero(heart.any(axis=1))[0]
    top = heart[rows[0] + 1].astype(int)
    assert np.count_nonzero(np.diff(top) == 1) == 2
    assert heart[rows[-1]].sum() <= 4


def test_every_factor_changes_the_image_where_geometry_says_it_must():
    """Each single-class step of every factor changes pixels, for every shape, except where
    the shapes' symmetries force (or allow) identical images, as in the official data.

    Orientation: the 40 official angles are linspace(0, 2pi, 40), a step of 2pi/39.
    * Orientation 0 and 39 are 0 and 2pi: the same image (the official file's duplicate).
    * All three sprites are mirror-symmetric about the vertical axis when upright, so the
      image at angle 2pi - t is the left-right mirror of the image at t: class o mirrors
      class 39 - o, exactly, for every shape and scale.
    * Hence the middle pair (19, 20), at pi -+ pi/39, is a mirror pair. The square repeats
      after pi/2 and the ellipse after pi, so those two are also the square/ellipse tilted by
      -+4.6 degrees; a small square tilted by 4.6 degrees can round to a mirror-symmetric
      pixel pattern, making 19 and 20 identical. That happens for the square at the two
      smallest scales only, and nowhere else.
    * No other multiple of 2pi/39 short of 2pi is a symmetry (a multiple of pi/2 or pi), so
      every other consecutive step must change the image.
    """
    base = np.array([0, 0, 0, 0, 10, 20])
    identical = []
    for shape in range(3):
        for scale in range(6):
            f = np.tile(base, (40, 1))
            f[:, 1], f[:, 2], f[:, 3] = shape, scale, np.arange(40)
            im = render_dsprites(f)  # (40, 64, 64)
            identical += [(shape, scale, o) for o in range(39) if (im[o] == im[o + 1]).all()]
            np.testing.assert_array_equal(im[0], im[39])  # full turn
            sprites = sprite_bank()[shape, scale]  # (40, S, S) centred on the canvas
            np.testing.assert_array_equal(sprites, sprites[::-1, :, ::-1])  # class o mirrors class 39 - o
    assert identical == [(0, 0, 19), (0, 1, 19)]
    for shape in range(3):
        for orient in (0, 7, 23):
            f = np.tile(base, (6, 1))
            f[:, 1], f[:, 3], f[:, 2] = shape, orient, np.arange(6)
            im = render_dsprites(f)
            areas = im.sum(axis=(1, 2))
            assert (np.diff(areas) > 0).all(), (shape, orient)  # larger scale, larger sprite
        for axis in (4, 5):
            f = np.tile(base, (32, 1))
            f[:, 1], f[:, axis] = shape, np.arange(32)
            im = render_dsprites(f)
            for p in range(31):
                assert (im[p] != im[p + 1]).any()
    # the three shapes differ at every scale and orientation
    bank = sprite_bank()
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert (bank[a] != bank[b]).any(axis=(-1, -2)).all()


def test_render_rejects_bad_classes():
    for bad, fragment in (
        (np.zeros((2, 5), np.int64), "(N, 6)"),
        (np.zeros((2, 6), np.float64), "integers"),
        (np.array([[0, 3, 0, 0, 0, 0]]), "shape class 3"),
        (np.array([[0, 0, 0, 0, 0, -1]]), "posY"),
    ):
        with pytest.raises(DataError) as e:
            render_dsprites(bad)
        assert_one_line(e, fragment)
    assert render_dsprites(np.zeros((0, 6), np.int64)).shape == (0, 64, 64)


def test_packed_blocks_match_the_renderer():
    """The fast generator (packed, translation by index arithmetic) equals render_dsprites."""
    bank = sprite_bank().reshape(720, SPRITE, SPRITE)
    for b in (0, 1, 257, 719):
        out = np.zeros((1024, 512), dtype=np.uint8)
        _packed_block(bank[b], out.reshape(32, 32, 64, 8))
        index = b * 1024 + np.arange(1024)
        want = np.packbits(render_dsprites(DSPRITES_SPACE.to_factors(index)).reshape(1024, -1), axis=1)
        np.testing.assert_array_equal(out, want)


# ====================================================================== official .npz
class _Trap:
    """Unpickling this raises: the loader must never read the pickled ``metadata`` member."""

    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise AssertionError("the pickled metadata member was unpickled")


def _write_official(path: Path, index: np.ndarray, *, metadata: bool = True, **override) -> dict:
    classes = np.stack(np.unravel_index(index, SIZES), axis=-1).astype(np.int64)  # (N, 6)
    values = np.stack([DSPRITES_SPACE.values[k][classes[:, k]] for k in range(6)], axis=-1)  # (N, 6)
    arrays = {"imgs": render_dsprites(classes).astype(np.uint8), "latents_values": values, "latents_classes": classes}
    arrays.update(override)
    if metadata:
        arrays["metadata"] = np.array([_Trap()], dtype=object)
    np.savez_compressed(path, **arrays)
    return arrays


def test_load_npz_official_layout_strided(tmp_path):
    index = np.arange(0, 737_280, 97)  # a strided subset of the canonical grid
    file = tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    arrays = _write_official(file, index)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official values must not trigger the mismatch warning
        ds = load_dsprites_npz(file)
    assert isinstance(ds, FactorDataset) and not ds.is_grid
    assert ds.factor_space == DSPRITES_SPACE
    np.testing.assert_array_equal(ds.factors, arrays["latents_classes"])
    np.testing.assert_array_equal(ds.factors, np.stack(np.unravel_index(index, SIZES), axis=-1))
    assert isinstance(ds.store, PackedBinaryStore) and len(ds) == len(index)
    got = ds.images(np.arange(len(ds)))[:, 0].numpy()
    np.testing.assert_array_equal(got, arrays["imgs"].astype(np.float32))


def test_load_npz_streams_large_image_arrays_in_chunks(tmp_path, monkeypatch):
    import gatedvae.data.dsprites as dsp

    monkeypatch.setattr(dsp, "_CHUNK_IMAGES", 7)  # many chunks with a ragged last one
    index = np.arange(5, 737_280, 4099)
    file = tmp_path / "d.npz"
    arrays = _write_official(file, index)
    ds = load_dsprites_npz(file)
    np.testing.assert_array_equal(ds.store.gather(np.arange(len(ds)))[:, 0].numpy(), arrays["imgs"])


def test_load_npz_warns_on_unofficial_values(tmp_path):
    index = np.arange(0, 737_280, 1001)
    classes = np.stack(np.unravel_index(index, SIZES), axis=-1)
    file = tmp_path / "d.npz"
    _write_official(file, index, latents_values=classes.astype(np.float64) * 3.0)
    with pytest.warns(RuntimeWarning, match="latents_values"):
        load_dsprites_npz(file)


def test_load_npz_errors_are_one_line(tmp_path):
    index = np.arange(0, 737_280, 5003)
    with pytest.raises(DataError) as e:
        load_dsprites_npz(tmp_path / "nope.npz")
    assert_one_line(e, "does not exist", "download")

    file = tmp_path / "nokey.npz"
    classes = np.stack(np.unravel_index(index, SIZES), axis=-1)
    np.savez(file, imgs=render_dsprites(classes).astype(np.uint8), latents_classes=classes)
    with pytest.raises(DataError) as e:
        load_dsprites_npz(file)
    assert_one_line(e, "latents_values")

    good = tmp_path / "good.npz"
    _write_official(good, index)
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        bad = tmp_path / f"trunc{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(DataError) as e:
            load_dsprites_npz(bad)
        assert_one_line(e)

    # the central directory intact but a member's bytes damaged
    corrupt = tmp_path / "corrupt.npz"
    raw = bytearray(data)
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("imgs.npy")
    start = info.header_offset + 30 + len(info.filename) + 40
    raw[start : start + 64] = bytes(64)
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        load_dsprites_npz(corrupt)
    assert_one_line(e, "imgs")

    notzip = tmp_path / "text.npz"
    notzip.write_text("hello")
    with pytest.raises(DataError) as e:
        load_dsprites_npz(notzip)
    assert_one_line(e, "truncated or corrupt")

    wrong = tmp_path / "wrong.npz"
    _write_official(wrong, index, imgs=np.zeros((len(index), 32, 32), np.uint8))
    with pytest.raises(DataError) as e:
        load_dsprites_npz(wrong)
    assert_one_line(e, "(N, 64, 64)")

    short = tmp_path / "short.npz"
    _write_official(short, index, latents_classes=classes[:-1])
    with pytest.raises(DataError) as e:
        load_dsprites_npz(short)
    assert_one_line(e, "latents_classes", "shape")

    out_of_range = classes.copy()
    out_of_range[3, 3] = 40
    oor = tmp_path / "oor.npz"
    _write_official(oor, index, latents_classes=out_of_range)
    with pytest.raises(DataError) as e:
        load_dsprites_npz(oor)
    assert_one_line(e, "orientation", "0..39")


# ====================================================================== CorrelatedEllipses
def test_ellipses_shapes_and_labels():
    ds = make_ellipses(size=3000, correlation=0.5, levels=16, seed=3)
    assert len(ds) == 3000 and ds.image_shape == (1, 64, 64) and not ds.is_grid
    assert ds.store.images.dtype.is_floating_point is False
    assert ds.factor_space.names == ("x", "y", "scale", "orientation")
    assert ds.factor_space.sizes == (16, 16, 16, 16)
    for v in ds.factor_space.values:
        np.testing.assert_allclose(v, bin_centres(16))
    assert ds.weak_names == ("x", "y", "scale", "orientation")
    assert ds.weak.shape == (3000, 4) and np.abs(ds.weak).max() <= 1.0
    np.testing.assert_array_equal(ds.factors, quantise(ds.weak, 16))
    # each class's bin contains its continuous value
    lo = -1 + ds.factors * (2 / 16)
    assert ((ds.weak >= lo - 1e-12) & (ds.weak <= lo + 2 / 16 + 1e-12)).all()
    # rendered from the quantised values: same classes, same image
    imgs = ds.store.images[:, 0].numpy()
    np.testing.assert_array_equal(imgs[:10], render_ellipses(bin_centres(16)[ds.factors[:10]]))
    # anti-aliased grayscale, not binary
    assert ((imgs > 0) & (imgs < 255)).any()


def test_ellipses_deterministic_per_seed():
    a = make_ellipses(size=500, seed=7)
    b = make_ellipses(size=500, seed=7)
    c = make_ellipses(size=500, seed=8)
    np.testing.assert_array_equal(a.store.images.numpy(), b.store.images.numpy())
    np.testing.assert_array_equal(a.factors, b.factors)
    np.testing.assert_array_equal(a.weak, b.weak)
    assert not np.array_equal(a.weak, c.weak)


@pytest.mark.parametrize("rho", [0.5, 0.8, 0.0, -0.5])
def test_ellipses_correlation(rho):
    ds = make_ellipses(size=20_000, correlation=rho, levels=16, seed=1)
    c = np.corrcoef(ds.weak.T)  # (4, 4)
    assert c[0, 1] == pytest.approx(rho, abs=0.05)  # x with y (clipping at 2 sigma shrinks it a little)
    assert c[2, 3] == pytest.approx(rho, abs=0.05)  # scale with orientation
    for i, j in ((0, 2), (0, 3), (1, 2), (1, 3)):
        assert abs(c[i, j]) < 0.03  # the two pairs are independent of each other


def test_ellipses_each_factor_changes_the_image():
    centres = bin_centres(16)
    base = np.array([centres[8]] * 4)
    for k in range(4):
        v = np.tile(base, (16, 1))
        v[:, k] = centres
        im = render_ellipses(v).astype(int)
        for i in range(15):
            assert np.abs(im[i] - im[i + 1]).sum() > 0, (k, i)


def test_ellipses_bad_arguments():
    for kwargs in ({"size": 0}, {"correlation": 1.0}, {"levels": 1}):
        with pytest.raises(DataError) as e:
            make_ellipses(**kwargs)
        assert_one_line(e)


# ====================================================================== bring your own images
def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    colours = {"a.png": (255, 0, 0), "b.png": (0, 255, 0), "c.jpg": (0, 0, 255), "d.bmp": (255, 255, 255)}
    sizes = {"a.png": (40, 40), "b.png": (64, 48), "c.jpg": (100, 100), "d.bmp": (16, 16)}  # mixed sizes
    for name, colour in colours.items():
        Image.new("RGB", sizes[name], colour).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    rows = [  # any order
        ["c.jpg", "heart", 2, 0.25],
        ["a.png", "square", 10, -1.5],
        ["d.bmp", "heart", 9, 3.0],
        ["b.png", "ellipse", 2, 0.0],
        ["zzz.png", "square", 1, 1.0],  # a row for an image that is not there: ignored
    ]
    labels = _write_csv(tmp_path / "labels.csv", ["file", "shape", "size", "pose"], rows)
    return folder, labels


def test_images_folder_with_labels(image_folder):
    folder, labels = image_folder
    with pytest.warns(RuntimeWarning, match="zzz.png"):  # its row is ignored, with a warning
        ds = load_images(folder, labels=labels, factor_columns=("shape", "size"), weak_columns=("pose",), image_size=32)
    assert len(ds) == 4 and ds.image_shape == (1, 32, 32)  # sorted: a, b, c, d
    assert ds.factor_space.names == ("shape", "size")
    assert ds.factor_space.sizes == (3, 3)
    np.testing.assert_array_equal(ds.factor_space.values[0], [0, 1, 2])  # text: 0..n-1 (ellipse, heart, square)
    np.testing.assert_array_equal(ds.factor_space.values[1], [2, 9, 10])  # numeric: sorted numerically
    np.testing.assert_array_equal(ds.factors, [[2, 2], [0, 0], [1, 0], [1, 1]])
    np.testing.assert_array_equal(ds.weak[:, 0], [-1.5, 0.0, 0.25, 3.0])
    assert ds.weak_names == ("pose",)
    gray = ds.store.images[:, 0, 16, 16].numpy()
    assert gray[0] == 76 and gray[1] == 150 and gray[3] == 255  # Pillow's ITU-R 601-2 luma of red, green, white
    assert abs(int(gray[2]) - 29) <= 2  # blue through JPEG


def test_images_rgb_and_resize(image_folder):
    folder, _ = image_folder
    ds = load_images(folder, color="rgb", image_size=20)
    assert ds.image_shape == (3, 20, 20) and ds.factor_space.num_factors == 0
    np.testing.assert_array_equal(ds.store.images[0, :, 10, 10].numpy(), [255, 0, 0])
    np.testing.assert_array_equal(ds.store.images[1, :, 10, 10].numpy(), [0, 255, 0])
    assert ds.factors.shape == (4, 0)


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "float", "npz"])
def test_images_from_array(tmp_path, layout):
    rng = np.random.default_rng(0)
    n = 6
    base = rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    if layout == "NHW":
        arr = base[..., 0]
    elif layout in ("NHWC", "npz"):
        arr = base
    elif layout == "NCHW":
        arr = base.transpose(0, 3, 1, 2).copy()
    else:
        arr = base[..., 0].astype(np.float32) / 255.0
    file = tmp_path / ("x.npz" if layout == "npz" else "x.npy")
    np.savez(file, images=arr) if layout == "npz" else np.save(file, arr)
    labels = _write_csv(tmp_path / "l.csv", ["cls", "w"], [[i % 2, i * 0.5] for i in range(n)])
    ds = load_images(file, labels=labels, factor_columns=("cls",), weak_columns=("w",), color="rgb", image_size=16)
    assert ds.image_shape == (3, 16, 16) and len(ds) == n
    np.testing.assert_array_equal(ds.factors[:, 0], [0, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(ds.weak[:, 0], np.arange(n) * 0.5)
    got = ds.store.images.numpy()
    if layout in ("NHWC", "NCHW", "npz"):
        np.testing.assert_array_equal(got, base.transpose(0, 3, 1, 2))  # same size: no resampling
    else:
        np.testing.assert_array_equal(got, np.repeat(base[:, None, :, :, 0], 3, axis=1))  # gray -> rgb
    small = load_images(file, color="gray", image_size=8)
    assert small.image_shape == (1, 8, 8)


def test_images_resize_is_area_like(tmp_path):
    arr = np.zeros((1, 32, 32), np.uint8)
    arr[0, :, ::2] = 255  # one-pixel stripes: an area/antialiased resize gives mid-gray, not stripes
    np.save(tmp_path / "s.npy", arr)
    ds = load_images(tmp_path / "s.npy", image_size=8)
    im = ds.store.images[0, 0].numpy().astype(int)
    assert np.abs(im - 128).max() < 40


def test_images_errors_are_one_line(tmp_path, image_folder):
    folder, labels = image_folder
    with pytest.raises(DataError) as e:
        load_images(tmp_path / "missing")
    assert_one_line(e, "does not exist")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        load_images(empty)
    assert_one_line(e, "no images")

    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("L", (8, 8)).save(broken / "ok.png")
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError) as e:
        load_images(broken)
    assert_one_line(e, "bad.png")

    missing_row = _write_csv(tmp_path / "m.csv", ["file", "shape"], [["a.png", "x"], ["d.bmp", "y"]])
    with pytest.raises(DataError) as e:
        load_images(folder, labels=missing_row, factor_columns=("shape",))
    assert_one_line(e, "b.png", "2 of 4")

    with pytest.raises(DataError) as e:
        load_images(folder, labels=labels, factor_columns=("shpe",))
    assert_one_line(e, "shpe", "did you mean 'shape'", "file, shape, size, pose")

    nan = _write_csv(
        tmp_path / "nan.csv", ["file", "pose"], [["a.png", 1], ["b.png", "nan"], ["c.jpg", 0], ["d.bmp", 0]]
    )
    with pytest.raises(DataError) as e:
        load_images(folder, labels=nan, weak_columns=("pose",))
    assert_one_line(e, "'pose'", "line 3")

    text = _write_csv(
        tmp_path / "t.csv", ["file", "pose"], [["a.png", 1], ["b.png", 2], ["c.jpg", "left"], ["d.bmp", 0]]
    )
    with pytest.raises(DataError) as e:
        load_images(folder, labels=text, weak_columns=("pose",))
    assert_one_line(e, "'pose'", "left", "line 4")

    with pytest.raises(DataError) as e:
        load_images(folder, factor_columns=("shape",))
    assert_one_line(e, "data.labels")

    nofile = _write_csv(tmp_path / "nf.csv", ["name", "shape"], [["a.png", "x"]])
    with pytest.raises(DataError) as e:
        load_images(folder, labels=nofile, factor_columns=("shape",))
    assert_one_line(e, "'file'")

    np.save(tmp_path / "a.npy", np.zeros((3, 8, 8), np.uint8))
    rows = _write_csv(tmp_path / "r.csv", ["c"], [[0], [1]])
    with pytest.raises(DataError) as e:
        load_images(tmp_path / "a.npy", labels=rows, factor_columns=("c",))
    assert_one_line(e, "2 label rows", "3 images")

    np.save(tmp_path / "f.npy", np.full((2, 8, 8), 2.0, np.float32))
    with pytest.raises(DataError) as e:
        load_images(tmp_path / "f.npy")
    assert_one_line(e, "[0, 1]")

    (tmp_path / "trunc.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-20])
    with pytest.raises(DataError) as e:
        load_images(tmp_path / "trunc.npy")
    assert_one_line(e, "trunc.npy")

    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as e:
        load_images(tmp_path / "obj.npy")
    assert_one_line(e, "obj.npy")


def test_images_gif_palette_bom_and_duplicate_rows(tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    Image.new("P", (10, 10), 3).save(folder / "x.gif")
    Image.new("L", (10, 10), 200).save(folder / "y.png")
    labels = tmp_path / "bom.csv"
    labels.write_text("\ufefffile,kind\ny.png,b\nx.gif,a\n", encoding="utf-8")
    ds = load_images(folder, labels=labels, factor_columns=["kind"], image_size=8)
    np.testing.assert_array_equal(ds.factors[:, 0], [0, 1])  # x.gif -> a, y.png -> b
    assert ds.store.images[1, 0, 4, 4] == 200
    dup = _write_csv(tmp_path / "dup.csv", ["file", "kind"], [["x.gif", "a"], ["y.png", "b"], ["x.gif", "c"]])
    with pytest.raises(DataError) as e:
        load_images(folder, labels=dup, factor_columns=["kind"])
    assert_one_line(e, "x.gif", "twice")


# ====================================================================== image modes (issue 16)
_S = 32  # sources are square and of the loaded size: no resampling, pixels compare one to one


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of ``(H, W, 3)`` uint8, as float (Pillow's "L" rounds it)."""
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (H, W)


def _png(path: Path, pixels: np.ndarray, color_type: int, bit_depth: int) -> None:
    """A PNG written by hand (Pillow cannot write 16-bit colour, or 2- and 4-bit grey):
    ``pixels`` ``(H, W, C)`` unsigned integers of ``bit_depth`` bits."""
    import struct
    import zlib

    h, w, _ = pixels.shape
    if bit_depth == 16:
        rows = pixels.astype(">u2").reshape(h, -1).view(np.uint8)  # (H, W*C*2) big-endian
    elif bit_depth == 8:
        rows = pixels.astype(np.uint8).reshape(h, -1)
    else:  # grey packed MSB first
        bits = np.unpackbits(pixels.astype(np.uint8).reshape(h, w, 1), axis=2)[:, :, 8 - bit_depth :]  # (H, W, bd)
        rows = np.packbits(bits.reshape(h, -1), axis=1)  # (H, ceil(W*bd/8))
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _mode_cases(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Write one file per (Pillow mode, format) Pillow can write, plus hand-made 16-bit and 2/4-bit
    PNGs; return file name -> (expected grey ``(S, S)``, expected RGB ``(S, S, 3)``, tolerance in levels)."""
    y, x = np.mgrid[0:_S, 0:_S]
    grey = np.rint((x + y) * 255.0 / (2 * _S - 2)).astype(np.uint8)  # (S, S) 0..255
    rgb = np.stack([x * 255 // (_S - 1), y * 255 // (_S - 1), 255 - (x + y) * 255 // (2 * _S - 2)], -1).astype(
        np.uint8
    )  # (S, S, 3)
    alpha = ((x * 8) % 256).astype(np.uint8)  # (S, S): must be dropped, not composited
    rng = np.random.default_rng(0)
    grey16 = np.clip(grey.astype(np.int64) * 257 + rng.integers(-128, 129, size=grey.shape), 0, 65535).astype(np.uint16)
    from_16 = np.rint(grey16 * (255.0 / 65535.0))  # (S, S)
    palette = rng.integers(0, 256, size=(16, 3), dtype=np.uint8)  # (16, 3)
    pal_index = (grey // 16).astype(np.uint8)  # (S, S)
    cases: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}

    def grey_case(name: str, im: Image.Image, expected: np.ndarray, tol: float = 1, **save) -> None:
        im.save(folder / name, **save)
        cases[name] = (expected, np.repeat(np.asarray(expected)[..., None], 3, -1), tol)

    def rgb_case(name: str, im: Image.Image, expected: np.ndarray, tol: float = 1, **save) -> None:
        im.save(folder / name, **save)
        cases[name] = (_luma(expected), expected, tol)

    binary = grey >= 128
    for ext in ("png", "tif", "bmp"):
        grey_case(f"mode_1.{ext}", Image.fromarray(binary), binary * 255.0)
    for ext in ("png", "tif", "bmp", "gif"):
        grey_case(f"mode_L.{ext}", Image.fromarray(grey), grey)
    grey_case("mode_L.webp", Image.fromarray(grey), grey, lossless=True)
    grey_case("mode_L.jpg", Image.fromarray(grey), grey, tol=4, quality=95)
    for ext in ("png", "tif"):
        grey_case(f"mode_LA.{ext}", Image.fromarray(np.stack([grey, alpha], -1)), grey)
    pal = Image.frombytes("P", (_S, _S), pal_index.tobytes())
    pal.putpalette(palette.reshape(-1).tolist())
    for ext in ("png", "tif", "bmp", "gif"):
        rgb_case(f"mode_P.{ext}", pal, palette[pal_index])
    rgb_case("mode_P_transparent_index.png", pal, palette[pal_index], transparency=3)
    rgb_case("mode_P_transparent_bytes.png", pal, palette[pal_index], transparency=bytes(range(0, 256, 16)))
    rgb_case("mode_PA.tif", pal.convert("PA"), palette[pal_index])
    for ext in ("png", "tif", "bmp"):
        rgb_case(f"mode_RGB.{ext}", Image.fromarray(rgb), rgb)
    rgb_case("mode_RGB.webp", Image.fromarray(rgb), rgb, lossless=True)
    rgb_case("mode_RGB.jpg", Image.fromarray(rgb), rgb, tol=8, quality=95)
    rgba = Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1))
    for ext in ("png", "tif"):
        rgb_case(f"mode_RGBA.{ext}", rgba, rgb)
    rgb_case("mode_RGBA.webp", rgba, rgb, lossless=True, exact=True)
    rgb_case("mode_CMYK.tif", Image.fromarray(rgb).convert("CMYK"), rgb)
    rgb_case("mode_CMYK.jpg", Image.fromarray(rgb).convert("CMYK"), rgb, tol=8, quality=95)
    rgb_case("mode_YCbCr.tif", Image.fromarray(rgb).convert("YCbCr"), rgb, tol=3)
    lab = Image.fromarray(rgb).convert("LAB")
    rgb_case("mode_LAB.tif", lab, np.asarray(lab.convert("RGB")))  # Pillow's own LAB -> RGB
    # 16-bit greyscale, the case: scaled by 255/65535, so within 1 level of the 8-bit image
    grey_case("mode_I16.png", Image.fromarray(grey16), from_16, tol=0)
    grey_case("mode_I16.tif", Image.fromarray(grey16), from_16, tol=0)
    grey_case("mode_I16B.tif", Image.frombytes("I;16B", (_S, _S), grey16.astype(">u2").tobytes()), from_16, tol=0)
    grey_case("mode_F.tif", Image.fromarray(grey.astype(np.float32) / 255.0), grey, tol=0)
    # by hand: 16-bit grey, grey + alpha, RGB and RGBA; 2- and 4-bit grey
    _png(folder / "hand_grey16.png", grey16[..., None], 0, 16)
    cases["hand_grey16.png"] = (from_16, np.repeat(from_16[..., None], 3, -1), 0)
    _png(folder / "hand_la16.png", np.stack([grey16, grey16[::-1]], -1), 4, 16)
    cases["hand_la16.png"] = (from_16, np.repeat(from_16[..., None], 3, -1), 1)
    rgb16 = rgb.astype(np.uint16) * 257  # (S, S, 3)
    _png(folder / "hand_rgb16.png", rgb16, 2, 16)
    cases["hand_rgb16.png"] = (_luma(rgb), rgb, 1)
    _png(folder / "hand_rgba16.png", np.concatenate([rgb16, rgb16[..., :1]], -1), 6, 16)
    cases["hand_rgba16.png"] = (_luma(rgb), rgb, 1)
    for bits in (2, 4):
        levels = (grey >> (8 - bits)).astype(np.uint8)  # (S, S) 0..2^bits-1
        _png(folder / f"hand_grey{bits}.png", levels[..., None], 0, bits)
        full = levels * (255.0 / (2**bits - 1))
        cases[f"hand_grey{bits}.png"] = (full, np.repeat(full[..., None], 3, -1), 0)
    return cases


@pytest.fixture(scope="module")
def mode_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notes on saving some modes
        cases = _mode_cases(folder)
    return folder, cases


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_every_mode_pillow_writes_reads_as_its_pixels(mode_folder, color):
    folder, cases = mode_folder
    ds = load_images(folder, color=color, image_size=_S)
    names = sorted(cases)
    assert len(ds) == len(names) >= 40
    got = ds.store.images.numpy().astype(np.float64)  # (N, C, S, S)
    bad = {}
    for i, name in enumerate(names):
        grey, rgb, tol = cases[name]
        want = grey[None] if color == "gray" else rgb.transpose(2, 0, 1)  # (C, S, S)
        err = np.abs(got[i] - want)
        # lossless files: every pixel within tol; JPEG: the mean within tol/4, no pixel beyond 3 tol
        ok = err.max() <= tol + 0.5 if "jpg" not in name else (err.mean() <= tol / 4 and err.max() <= 3 * tol)
        if not ok:
            bad[name] = (float(err.mean()), float(err.max()))
    assert bad == {}


def test_a_16bit_png_equals_its_8bit_version(tmp_path):
    """The issue's case: a 16-bit greyscale PNG among 8-bit files was read as solid white."""
    grey = np.random.default_rng(1).integers(0, 256, size=(24, 24), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "a_8bit.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "b_16bit.png")
    assert Image.open(tmp_path / "b_16bit.png").mode == "I;16"
    ds = load_images(tmp_path, image_size=24)
    eight, sixteen = ds.store.images.numpy().astype(int)[:, 0]
    assert np.abs(eight - sixteen).max() <= 1 and abs(sixteen.mean() - grey.mean()) < 0.5


def test_modes_without_a_white_level_are_refused_in_one_line(tmp_path):
    cases = {
        "i32.tif": (Image.fromarray(np.full((8, 8), 70000, np.int32)), "32-bit integer greyscale"),
        "big.tif": (Image.fromarray(np.full((8, 8), 2.0, np.float32)), "float pixels outside [0, 1]"),
    }
    for name, (im, fragment) in cases.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        im.save(folder / name)
        with pytest.raises(DataError) as e:
            load_images(folder)
        assert_one_line(e, name, fragment, "save it as")


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((16, 16), np.uint8)
    img[:, :8] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: shown with the right half white
    Image.fromarray(img).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    ds = load_images(tmp_path, image_size=16)
    shown = ds.store.images.numpy()[0, 0].astype(int)
    assert shown[:, 12].mean() > 200 and shown[:, 3].mean() < 50
    assert "1 turned upright by their EXIF orientation" in ds.notes[0]


def test_describe_names_the_source_modes_and_their_conversion(mode_folder):
    from gatedvae.data.preview import describe_dataset

    folder, cases = mode_folder
    text = describe_dataset(load_images(folder, image_size=8))
    (note,) = [line for line in text.splitlines() if "note" in line]
    assert f"read {len(cases)} files by Pillow mode:" in note
    assert "I;16 (16-bit, scaled 65535 -> 255)" in note and "RGBA (alpha dropped)" in note and "1 F (float" in note


def test_label_rows_for_absent_images_warn_with_a_count(image_folder):
    folder, labels = image_folder
    with pytest.warns(RuntimeWarning, match=r"1 of 5 rows name images that are not in .* \(e\.g\. 'zzz\.png'\)"):
        load_images(folder, labels=labels, factor_columns=("shape",))


def test_unknown_column_message_has_punctuation_and_a_did_you_mean(tmp_path, image_folder):
    folder, _ = image_folder
    header = ["file", "pose_Rx", "pose_Ry", "true_yaw", "AU45_r"]
    labels = _write_csv(tmp_path / "faces.csv", header, [[n, 0, 0, 0, 0] for n in ("a.png", "b.png", "c.jpg", "d.bmp")])
    cols = ", ".join(header)
    for column, message in [
        ("yaw", f"column 'yaw' is not in {labels}; did you mean 'true_yaw'? its columns are: {cols}"),
        ("AU46_r", f"column 'AU46_r' is not in {labels}; did you mean 'AU45_r'? its columns are: {cols}"),
        ("roll", f"column 'roll' is not in {labels}; its columns are: {cols}"),
    ]:
        with pytest.raises(DataError) as e:
            load_images(folder, labels=labels, weak_columns=(column,))
        assert str(e.value) == message


# ====================================================================== preview
def _mini_dsprites() -> FactorDataset:
    sub, index = DSPRITES_SPACE.subspace({"scale": 5, "orientation": 10, "posX": 8, "posY": 8})
    images = render_dsprites(DSPRITES_SPACE.to_factors(index))
    return FactorDataset("mini", PackedBinaryStore.from_images(images), sub)


def test_preview_grid_dataset(tmp_path):
    ds = _mini_dsprites()
    out = preview(ds, tmp_path / "fig" / "p.png", np.random.default_rng(0))
    assert out == tmp_path / "fig" / "p.png" and out.exists()
    with Image.open(out) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    assert [p.name for p in out.parent.iterdir()] == ["p.png"]  # no temp file left behind
    # traversals vary exactly one factor
    base = ds.factors_of(np.array([5]))[0]
    idx = traversal_indices(ds, "posX", base, np.arange(4))
    f = ds.factors_of(idx)
    np.testing.assert_array_equal(f[:, 4], np.arange(4))
    np.testing.assert_array_equal(np.delete(f, 4, axis=1), np.tile(np.delete(base, 4), (4, 1)))


def test_preview_non_grid_and_no_factors(tmp_path):
    ds = make_ellipses(size=2000, seed=0)
    out = preview(ds, tmp_path / "e.png", np.random.default_rng(1), n_samples=8, traversal_factors=["x", "scale"])
    with Image.open(out) as im:
        im.verify()
    base = ds.factors[0]
    idx = traversal_indices(ds, "x", base, np.arange(16))
    present = idx >= 0
    np.testing.assert_array_equal(ds.factors[idx[present], 0], np.arange(16)[present])
    assert idx[8] >= 0 and ds.factors[idx[8], 0] == 8

    arr = np.random.default_rng(0).integers(0, 256, (5, 3, 12, 12), dtype=np.uint8)
    np.save(tmp_path / "a.npy", arr)
    plain = load_images(tmp_path / "a.npy", color="rgb", image_size=12)
    out = preview(plain, tmp_path / "plain.png", np.random.default_rng(0))  # samples only, drawn with replacement
    with Image.open(out) as im:
        im.verify()
    with pytest.raises(DataError) as e:
        preview(ds, tmp_path / "x.png", np.random.default_rng(0), traversal_factors=["sclae"])
    assert_one_line(e, "scale")


# ====================================================================== slow: the full grid
@pytest.mark.slow
def test_full_procedural_dsprites_time_and_memory():
    t0 = time.perf_counter()
    ds = make_dsprites()
    elapsed = time.perf_counter() - t0
    assert elapsed < 60.0, elapsed
    assert ds.store.nbytes < 400e6 and ds.store.nbytes == 737_280 * 512
    assert ds.is_grid and len(ds) == 737_280 and ds.factor_space == DSPRITES_SPACE
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ds), 4000)
    got = ds.images(idx)[:, 0].numpy().astype(bool)
    np.testing.assert_array_equal(got, render_dsprites(DSPRITES_SPACE.to_factors(idx)))


@pytest.mark.slow
def test_dsprites_cache_roundtrip_and_corruption(tmp_path):
    first = make_dsprites(cache_dir=tmp_path)
    file = tmp_path / CACHE_FILE
    crc = tmp_path / (CACHE_FILE + ".crc32")
    assert file.exists() and crc.exists() and not list(tmp_path.glob("*.tmp"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = make_dsprites(cache_dir=tmp_path)
    assert np.array_equal(first.store.packed.numpy(), second.store.packed.numpy())
    del second
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 3])  # truncated
    with pytest.warns(RuntimeWarning, match="regenerating"):
        third = make_dsprites(cache_dir=tmp_path)
    assert np.array_equal(first.store.packed.numpy(), third.store.packed.numpy())
    assert file.stat().st_size == len(data)  # rewritten whole
    del third
    np.save(file, np.zeros((10, 512), np.uint8))  # wrong shape
    with pytest.warns(RuntimeWarning, match="regenerating"):
        make_dsprites(cache_dir=tmp_path)
    raw = bytearray(file.read_bytes())
    raw[-600_000:-500_000] = bytes(100_000)  # right shape, damaged content
    file.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="checksum"):
        make_dsprites(cache_dir=tmp_path)
    file.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="regenerating"):
        make_dsprites(cache_dir=tmp_path)
    crc.unlink()  # a crash between writing the array and its checksum
    with pytest.warns(RuntimeWarning, match="checksum"):
        make_dsprites(cache_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        last = make_dsprites(cache_dir=tmp_path)  # healed
    assert np.array_equal(first.store.packed.numpy(), last.store.packed.numpy())


@pytest.mark.slow
def test_full_official_format_file_is_a_grid(tmp_path):
    """A full 737,280-image file in the official layout loads as a full grid (streamed)."""
    full = make_dsprites()
    n = len(full)
    index = np.arange(n)
    classes = DSPRITES_SPACE.to_factors(index)
    file = tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for key, arr in (("latents_classes", classes), ("latents_values", DSPRITES_SPACE.to_values(classes))):
            with zf.open(key + ".npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)
        with zf.open("imgs.npy", "w", force_zip64=True) as fh:
            header = {"descr": "|u1", "fortran_order": False, "shape": (n, 64, 64)}
            np.lib.format.write_array_header_1_0(fh, header)
            for s in range(0, n, 65536):
                fh.write(
                    full.store.gather_uint8(np.arange(s, min(s + 65536, n)))[:, 0]
                    .numpy()
                    .astype(bool)
                    .astype(np.uint8)
                    .tobytes()
                )
    ds = load_dsprites_npz(file)
    assert ds.is_grid and ds.factor_space == DSPRITES_SPACE
    assert np.array_equal(ds.store.packed.numpy(), full.store.packed.numpy())


# --------------------------------------------------------------------------- the dataset registry

# Small builds of the procedural datasets (the others read the user's files; their tests are above).
SMALL = {
    "dsprites": ["stride.posX=8", "stride.posY=8", "stride.orientation=10"],
    "ellipses": ["size=300", "levels=4"],
    "faces": [f"stride.{f}={s}" for f, s in (("yaw", 9), ("pitch", 5), ("smile", 5), ("mouth", 4))],
}


def test_every_registered_dataset_states_its_factors_and_settings():
    assert set(SMALL) <= set(DATASETS)
    fields = set(DataConfig.__dataclass_fields__)
    for name, entry in DATASETS.items():
        assert entry.name == name and entry.description and entry.factors
        assert set(entry.uses) <= fields, name
    for name, overrides in SMALL.items():
        ds = build_dataset(apply_overrides(DataConfig(name=name), overrides))
        assert len(ds) > 0
        for factor in ds.factor_space.names:  # the registration's description names every factor
            assert factor in DATASETS[name].factors, (name, factor)


def test_baseline_help_lists_every_registered_dataset(capsys):
    from gatedvae.cli import main

    with pytest.raises(SystemExit):
        main(["baseline", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "dataset a registered dataset: " + ", ".join(DATASETS) in help_text and "faces" in DATASETS


def test_unknown_dataset_name_and_option_fail_in_one_line_with_a_did_you_mean():
    with pytest.raises(ConfigError) as exc:
        build_dataset(DataConfig(name="elipses"))
    assert_one_line(exc, "data.name: 'elipses' is not one of 'dsprites'", "did you mean 'ellipses'?")
    with pytest.raises(ConfigError) as exc:
        validate_data_config(DataConfig(name="svhn"))
    assert_one_line(exc, "data.name: 'svhn' is not one of", "'faces'")
    with pytest.raises(ConfigError) as exc:
        validate_data_config(DataConfig(name="ellipses", options={"size": 3}))
    assert_one_line(exc, "data.options.size is not an option of dataset ellipses (it has: none)")


def test_a_new_dataset_is_one_registration_with_its_own_options():
    @register_dataset(
        "_test_bars",
        "one bar per image",
        factors="position (width)",
        uses=("stride",),
        options={"width": Option(8, "image side", check=(lambda v: v >= 2, "must be at least 2"))},
    )
    def build_bars(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
        w = options["width"]
        images = np.zeros((w, 1, w, w), dtype=np.uint8)  # (N, 1, W, W)
        images[np.arange(w), 0, :, np.arange(w)] = 255
        space = FactorSpace(("position",), (w,), (np.arange(w, dtype=float),))
        return FactorDataset("_test_bars", Uint8Store(images), space).subset_grid(dict(cfg.stride))

    try:
        cfg = apply_overrides(Config(), ["data.name=_test_bars", "data.options.width=6", "data.stride.position=2"])
        assert from_dict(Config, to_dict(cfg)) == cfg and to_dict(cfg)["data"]["options"] == {"width": 6}
        assert "options" not in to_dict(Config())["data"]  # 0.1's configs keep their layout and run ids
        ds = build_dataset(cfg.data)
        assert len(ds) == 3 and ds.image_shape == (1, 6, 6)
        assert len(build_dataset(DataConfig(name="_test_bars"))) == 8  # the option's default
        with pytest.raises(ConfigError, match="data.options.width: must be at least 2, got 1"):
            build_dataset(DataConfig(name="_test_bars", options={"width": 1}))
        with pytest.raises(ConfigError, match="data.options.width: expected int"):
            build_dataset(DataConfig(name="_test_bars", options={"width": "wide"}))
        with pytest.raises(ConfigError, match="did you mean 'width'"):
            build_dataset(DataConfig(name="_test_bars", options={"widht": 4}))
    finally:
        DATASETS.pop("_test_bars", None)
