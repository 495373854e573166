"""The bad-input corpus (issue 7): every case through the real command line, ``gatedvae.cli.main``.

Each case must give exit status 2, exactly one line on stderr (``error: ...``) that names the
problem and the way out, no traceback, and leave every file of the workspace untouched: a
finished run, an untrained run, a foreign directory and every data file are hashed before and
after each case, and a training that was refused must not have created its run directory.

docs/reliability.md lists every case with its message.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import cuda_available, merge, tiny_dict
from gatedvae import cli
from gatedvae.data.dsprites import DSPRITES_SPACE

# The tiny gated config on 200 ellipses, a 16-wide MLP and batches of 8 (tests/conftest.py).
BASE = tiny_dict(
    data={"size": 200},
    model={"hidden": 16},
    train={"steps": 10, "batch_size": 8, "checkpoint_every": 5, "threads": 1},
)


# --------------------------------------------------------------------------- the workspace
def _dsprites_npz(
    path: Path, n: int = 40, image_shape=(64, 64), keys=("imgs", "latents_values", "latents_classes")
) -> None:
    rng = np.random.default_rng(0)
    classes = DSPRITES_SPACE.sample(n, rng)  # (n, 6)
    arrays = {
        "imgs": (rng.random((n, *image_shape)) < 0.05).astype(np.uint8),
        "latents_values": DSPRITES_SPACE.to_values(classes),
        "latents_classes": classes,
    }
    np.savez(path, **{k: arrays[k] for k in keys if k in arrays}, **{k: np.zeros(3) for k in keys if k not in arrays})


def _png(path: Path, size: tuple[int, int], value: int = 128) -> None:
    from PIL import Image

    Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint8), mode="L").save(path)


def _csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace with existing runs and every data file the cases read."""
    root = tmp_path_factory.mktemp("bad-input")
    old = os.getcwd()
    os.chdir(root)
    try:
        # A finished run, and the config it was made from.
        (root / "good.yaml").write_text(yaml.safe_dump(BASE), encoding="utf-8")
        assert cli.main(["train", "good.yaml", "--run-dir", "done", "--quiet", "--no-tensorboard"]) == 0
        # A run stopped before its first checkpoint: config.yaml, status, no weights.
        (root / "untrained" / "checkpoints").mkdir(parents=True)
        (root / "untrained" / "config.yaml").write_bytes((root / "done" / "config.yaml").read_bytes())
        (root / "untrained" / "status.json").write_text('{"status": "running", "step": 0, "total_steps": 10}\n')
        # Something that is not a run at all.
        (root / "foreign").mkdir()
        (root / "foreign" / "notes.txt").write_text("my holiday photos\n")
        # A run directory whose config.yaml is someone else's file.
        (root / "alien" / "checkpoints").mkdir(parents=True)
        (root / "alien" / "config.yaml").write_text("experiment: 42\nlearning_rate: 0.1\n")
        # A run whose latest checkpoint is cut in half (copied from the finished run).
        import shutil

        shutil.copytree(root / "done", root / "damaged")
        (root / "damaged" / "status.json").write_text('{"status": "running", "step": 10, "total_steps": 20}\n')
        last = sorted((root / "damaged" / "checkpoints").glob("step-*"))[-1]
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        # A run whose checkpoint was written by another model (hidden 32, not 16).
        other = merge(BASE, {"model": {"hidden": 32}})
        (root / "other.yaml").write_text(yaml.safe_dump(other), encoding="utf-8")
        assert cli.main(["train", "other.yaml", "--run-dir", "other", "--quiet", "--no-tensorboard"]) == 0
        shutil.copytree(root / "done", root / "mismatch")
        (root / "mismatch" / "status.json").write_text('{"status": "running", "step": 10, "total_steps": 20}\n')
        for p in (root / "mismatch" / "checkpoints").glob("step-*"):
            p.write_bytes((root / "other" / "checkpoints" / p.name).read_bytes())

        d = root / "data"
        d.mkdir()
        _dsprites_npz(d / "dsprites_small.npz")
        full = (d / "dsprites_small.npz").read_bytes()
        (d / "dsprites_truncated.npz").write_bytes(full[: len(full) // 2])
        rng = np.random.default_rng(1)
        corrupt = bytearray(full)
        for i in rng.choice(np.arange(200, len(full) - 100), 64, replace=False):
            corrupt[i] ^= 0xFF
        (d / "dsprites_corrupt.npz").write_bytes(bytes(corrupt))
        (d / "random_bytes.npz").write_bytes(rng.bytes(4096))
        _dsprites_npz(d / "dsprites_wrong_keys.npz", keys=("images", "labels"))
        _dsprites_npz(d / "dsprites_32px.npz", image_shape=(32, 32))
        np.savez(d / "two_arrays.npz", pictures=np.zeros((5, 8, 8), np.uint8), masks=np.zeros((5, 8, 8), np.uint8))
        np.save(d / "five_dims.npy", np.zeros((6, 5, 7, 9, 2), dtype=np.uint8))
        np.save(d / "two_channels.npy", np.zeros((6, 8, 8, 2), dtype=np.uint8))
        np.save(d / "floats_out_of_range.npy", np.full((6, 8, 8), 3.5, dtype=np.float32))
        ragged = np.empty(3, dtype=object)
        ragged[:] = [np.zeros((8, 8), np.uint8), np.zeros((16, 16), np.uint8), np.zeros((8, 12), np.uint8)]
        np.save(d / "mixed_sizes.npy", ragged, allow_pickle=True)
        np.save(d / "good6.npy", rng.integers(0, 256, size=(6, 8, 8), dtype=np.uint8))
        good6 = (d / "good6.npy").read_bytes()
        (d / "truncated.npy").write_bytes(good6[: len(good6) - 100])
        _csv(d / "labels6.csv", "size,pose", [f"{i % 2},{0.1 * i}" for i in range(6)])
        _csv(d / "labels5.csv", "size,pose", [f"{i % 2},{0.1 * i}" for i in range(5)])
        _csv(d / "labels_nan_weak.csv", "size,pose", [f"{i % 2},{'nan' if i == 3 else 0.1 * i}" for i in range(6)])
        _csv(d / "labels_text_weak.csv", "size,pose", [f"{i % 2},{'left' if i == 2 else 0.1 * i}" for i in range(6)])
        _csv(d / "labels_nan_factor.csv", "size,pose", [f"{'nan' if i == 4 else i % 2},{0.1 * i}" for i in range(6)])
        _csv(d / "labels_empty_factor.csv", "size,pose", [f"{'' if i == 1 else i % 2},{0.1 * i}" for i in range(6)])
        _csv(d / "labels_short_row.csv", "size,pose", [f"{i % 2},{0.1 * i}" if i != 2 else "1" for i in range(6)])
        (d / "labels_latin1.csv").write_bytes(b"size,pose\n" + "caf\xe9,1\n".encode("latin-1") * 6)
        (d / "labels_empty.csv").write_bytes(b"")
        folder = d / "folder"
        folder.mkdir()
        for i in range(4):
            _png(folder / f"img{i}.png", (8, 8), 40 * i)
        _csv(d / "folder_labels_missing_row.csv", "file,size", ["img0.png,1", "img1.png,2", "img3.png,1"])
        _csv(
            d / "folder_labels_duplicate.csv",
            "file,size",
            ["img0.png,1", "img1.png,2", "img2.png,1", "img3.png,2", "img1.png,2"],
        )
        _csv(d / "folder_labels_no_file.csv", "name,size", ["img0.png,1", "img1.png,2", "img2.png,1", "img3.png,2"])
        broken = d / "folder_broken"
        broken.mkdir()
        _png(broken / "a.png", (8, 8))
        (broken / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        (d / "empty_folder").mkdir()
        (d / "notes.txt").write_text("not images\n")
    finally:
        os.chdir(old)
    return root


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path], list[str]]
    problem: str  # regex: the message names the problem
    way_out: str  # regex: ... and the way out


def _train_cfg(name: str, patch: dict | None = None, text: str | None = None, suffix: str = ".yaml", extra: tuple = ()):
    """A case that trains a config written into the workspace as ``cases/<name><suffix>``."""

    def argv(ws: Path) -> list[str]:
        (ws / "cases").mkdir(exist_ok=True)
        path = ws / "cases" / f"{name}{suffix}"
        path.write_text(text if text is not None else yaml.safe_dump(merge(BASE, patch or {})), encoding="utf-8")
        return ["train", str(path), *extra, "--run-dir", str(ws / "new-run"), "--quiet", "--no-tensorboard"]

    return argv


def _data(*args: str):
    return lambda ws: ["data", "describe", *[a.replace("{d}", str(ws / "data")) for a in args], "--quiet"]


def _cmd(*args: str):
    return lambda ws: [a.replace("{ws}", str(ws)) for a in args]


PARTS = BASE["gating"]["partitions"]
IMAGES = "images"

CASES = [
    # ---- configs
    Case(
        "config-unknown-top-key",
        _train_cfg("unknown_top", {"trian": {"steps": 3}}),
        r"unknown config key 'trian'",
        r"did you mean 'train'\? valid keys: data, model, gating, train",
    ),
    Case(
        "config-unknown-nested-key",
        _train_cfg("unknown_nested", {"model": {"betta": 4}}),
        r"model.betta is not a hyperparameter of beta_vae",
        r"did you mean 'beta'",
    ),
    Case(
        "config-wrong-type-int",
        _train_cfg("wrong_type", {"train": {"steps": "many"}}),
        r"train.steps: expected int, got 'many'",
        r"fix the value",
    ),
    Case(
        "config-wrong-type-list",
        _train_cfg("wrong_list", {"gating": {"partitions": "position"}}),
        r"gating.partitions: expected list",
        r"fix the value",
    ),
    Case(
        "config-wrong-type-bool",
        _train_cfg("wrong_bool", {"gating": {"enabled": 2}}),
        r"gating.enabled: expected bool",
        r"fix the value",
    ),
    Case(
        "config-negative-steps",
        _train_cfg("neg_steps", {"train": {"steps": -5}}),
        r"train.steps: must be non-negative, got -5",
        r"non-negative",
    ),
    Case(
        "config-zero-batch",
        _train_cfg("zero_batch", {"train": {"batch_size": 0}}),
        r"train.batch_size: must be at least 2",
        r"at least 2",
    ),
    Case(
        "config-zero-latent",
        _train_cfg("zero_latent", {"model": {"latent_dim": 0}, "gating": {"enabled": False, "partitions": []}}),
        r"model.latent_dim: must be at least 1, got 0",
        r"at least 1",
    ),
    Case(
        "config-negative-hidden",
        _train_cfg("neg_hidden", {"model": {"hidden": -16}}),
        r"model.hidden: must be at least 1, got -16",
        r"at least 1",
    ),
    Case(
        "config-zero-partition-size",
        _train_cfg("zero_part", {"gating": {"partitions": [{**PARTS[0], "size": 0}, *PARTS[1:]]}}),
        r"partition 'position': size must be at least 1, got 0",
        r"at least 1",
    ),
    Case(
        "config-negative-lr",
        _train_cfg("neg_lr", {"train": {"lr": -0.001}}),
        r"train.lr: must be positive, got -0.001",
        r"positive",
    ),
    Case(
        "config-nan-lr",
        _train_cfg("nan_lr", text=yaml.safe_dump(BASE).replace("lr: 0.001", "lr: .nan")),
        r"train.lr: must be a finite number",
        r"finite",
    ),
    Case(
        "config-zero-checkpoint-every",
        _train_cfg("zero_ckpt", {"train": {"checkpoint_every": 0}}),
        r"train.checkpoint_every: must be at least 1, got 0",
        r"at least 1",
    ),
    Case(
        "config-negative-beta",
        _train_cfg("neg_beta", {"model": {"beta": -4}}),
        r"model.beta: must be non-negative, got -4",
        r"non-negative",
    ),
    Case(
        "config-partitions-not-summing",
        _train_cfg("sum", {"model": {"latent_dim": 6}}),
        r"partitions sizes sum to 4 but model.latent_dim is 6",
        r"make them equal",
    ),
    Case(
        "config-partition-missing-factor",
        _train_cfg("missing_factor", {"gating": {"partitions": [{"name": "shape", "size": 4, "factors": ["shape"]}]}}),
        r"partition 'shape' names factor\(s\) \['shape'\] that dataset '\w+' lacks",
        r"its factors are: x, y, scale, orientation",
    ),
    Case(
        "config-duplicate-partition",
        _train_cfg("dup", {"gating": {"partitions": [PARTS[0], {**PARTS[1], "name": "position"}, PARTS[2]]}}),
        r"duplicate partition names \['position'\]",
        r"unique name",
    ),
    Case(
        "config-gating-without-partitions",
        _train_cfg("no_parts", {"gating": {"partitions": []}}),
        r"gating.enabled is true but gating.partitions is empty",
        r"declare the partitions",
    ),
    Case(
        "config-unknown-model",
        _train_cfg("unknown_model", {"model": {"name": "beta_vea"}}),
        r"unknown model 'beta_vea'",
        r"did you mean 'beta_vae'",
    ),
    Case(
        "config-unused-hyperparameter",
        _train_cfg("unused_hyper", {"model": {"gamma": 10.0}}),
        r"model.gamma is not a hyperparameter of beta_vae \(it uses: beta\)",
        r"remove it",
    ),
    Case(
        "config-unknown-net",
        _train_cfg("unknown_net", {"model": {"net": "resnet"}}),
        r"model.net: 'resnet' is not one of 'mlp', 'conv64'",
        r"not one of",
    ),
    Case(
        "config-unknown-dataset",
        _train_cfg("unknown_data", {"data": {"name": "svhn"}}),
        r"data.name: 'svhn' is not one of",
        r"'dsprites'",
    ),
    Case(
        "config-batch-larger-than-data",
        _train_cfg("big_batch", {"train": {"batch_size": 1000}}),
        r"train.batch_size=1000 exceeds the dataset's 200 images",
        r"lower it",
    ),
    Case(
        "config-cuda-missing",
        _train_cfg("cuda", {"train": {"device": "cuda"}}),
        r"CUDA is not available",
        r"train.device=auto or cpu",
    ),
    Case(
        "config-condition-missing-factor",
        _train_cfg(
            "cond", {"model": {"name": "cvae", "condition": ["colour"]}, "gating": {"enabled": False, "partitions": []}}
        ),
        r"model.condition names factor 'colour'",
        r"its factors are",
    ),
    Case(
        "config-malformed-yaml",
        _train_cfg("malformed", text="model: {name: beta_vae, latent_dim: 4\ntrain: [steps: 3\n"),
        r"malformed.yaml' is not valid YAML: .* at line 2, column \d+",
        r"fix the syntax there",
    ),
    Case(
        "config-malformed-json",
        _train_cfg("malformed_json", text='{"model": {"name": "beta_vae",}', suffix=".json"),
        r"malformed_json.json' is not valid JSON: .*line 1 column \d+",
        r"fix the syntax there",
    ),
    Case(
        "config-not-a-mapping",
        _train_cfg("list_top", text="- model\n- train\n"),
        r"expected a mapping of keys to values",
        r"mapping",
    ),
    Case(
        "config-file-missing",
        _cmd("train", "{ws}/cases/nonexistent.yaml", "--run-dir", "{ws}/new-run"),
        r"config file '.*nonexistent.yaml' does not exist",
        r"pass the path of a .yaml or .json file",
    ),
    Case(
        "config-override-unknown-key",
        _train_cfg("ovr_key", extra=("train.stesp=5",)),
        r"unknown config key 'train.stesp'",
        r"did you mean 'steps'",
    ),
    Case(
        "config-override-unknown-middle-key",
        _train_cfg("ovr_mid", extra=("gating.partitons.0.size=2",)),
        r"unknown config key 'gating.partitons' in 'gating.partitons.0.size=2'",
        r"did you mean 'gating.partitions'\?",
    ),
    Case(
        "config-override-wrong-type",
        _train_cfg("ovr_type", extra=("model.latent_dim=four",)),
        r"model.latent_dim: expected int, got 'four'",
        r"fix the value",
    ),
    Case(
        "config-override-no-equals",
        _train_cfg("ovr_eq", extra=("model.beta",)),
        r"override 'model.beta' is not of the form key=value",
        r"for example model.beta=4",
    ),
    Case(
        "config-partition-name-is-a-path",
        _train_cfg("part_path", {"gating": {"partitions": [{**PARTS[0], "name": "../../escape"}, *PARTS[1:]]}}),
        r"partition name '../../escape' must be a plain name",
        r"rename it",
    ),
    Case(
        "config-stride-zero",
        _train_cfg("stride0", {"data": {"name": "dsprites", "stride": {"posX": 0}}}),
        r"data.stride.posX: a stride must be at least 1, got 0",
        r"at least 1",
    ),
    Case(
        "config-cluster-needs-two",
        _train_cfg(
            "cluster1",
            {
                "gating": {
                    "partitions": [{"name": "pos", "size": 4, "factors": ["x"], "sampler": "cluster", "clusters": 1}]
                }
            },
        ),
        r"a cluster sampler needs clusters >= 2, got 1",
        r">= 2",
    ),
    # ---- data
    Case(
        "data-dsprites-truncated-npz",
        _data("dsprites_file", "path={d}/dsprites_truncated.npz"),
        r"dsprites_truncated.npz is not a readable .npz archive",
        r"truncated or corrupt, download",
    ),
    Case(
        "data-dsprites-corrupt-npz",
        _data("dsprites_file", "path={d}/dsprites_corrupt.npz"),
        r"dsprites_corrupt.npz",
        r"download .*again",
    ),
    Case(
        "data-dsprites-random-bytes",
        _data("dsprites_file", "path={d}/random_bytes.npz"),
        r"random_bytes.npz is not a readable .npz archive",
        r"download",
    ),
    Case(
        "data-dsprites-wrong-keys",
        _data("dsprites_file", "path={d}/dsprites_wrong_keys.npz"),
        r"lacks the array\(s\) imgs, latents_values, latents_classes \(has images, labels\)",
        r"expected the official",
    ),
    Case(
        "data-dsprites-wrong-image-shape",
        _data("dsprites_file", "path={d}/dsprites_32px.npz"),
        r"'imgs' has shape \(40, 32, 32\), expected \(N, 64, 64\)",
        r"is this the dSprites .npz",
    ),
    Case(
        "data-dsprites-missing-file",
        _data("dsprites_file", "path={d}/nope.npz"),
        r"nope.npz does not exist",
        r"download .* and set data.path",
    ),
    Case(
        "data-images-npz-wrong-keys",
        _data(IMAGES, "path={d}/two_arrays.npz"),
        r"holds arrays pictures, masks",
        r"store the images under the key 'images'",
    ),
    Case(
        "data-images-wrong-shape-5d",
        _data(IMAGES, "path={d}/five_dims.npy"),
        r"has shape \(6, 5, 7, 9, 2\)",
        r"expected \(N, H, W\)",
    ),
    Case(
        "data-images-two-channels",
        _data(IMAGES, "path={d}/two_channels.npy"),
        r"has shape \(6, 8, 8, 2\)",
        r"C in 1, 3, 4",
    ),
    Case(
        "data-images-mixed-sizes-array",
        _data(IMAGES, "path={d}/mixed_sizes.npy"),
        r"mixed_sizes.npy holds Python objects \(images of different sizes\?\)",
        r"stack images of one size into one uint8 array, or put the image files in a folder",
    ),
    Case(
        "data-images-truncated-npy",
        _data(IMAGES, "path={d}/truncated.npy"),
        r"truncated.npy is unreadable",
        r"truncated, corrupt or pickled",
    ),
    Case(
        "data-images-float-range",
        _data(IMAGES, "path={d}/floats_out_of_range.npy"),
        r"float values outside \[0, 1\]",
        r"scale it to \[0, 1\] or save it as uint8",
    ),
    Case(
        "data-images-not-images",
        _data(IMAGES, "path={d}/notes.txt"),
        r"neither a folder nor an .npy/.npz array",
        r"folder|\.npy",
    ),
    Case(
        "data-images-empty-folder",
        _data(IMAGES, "path={d}/empty_folder"),
        r"holds no images",
        r"point data.path at the image folder",
    ),
    Case(
        "data-images-corrupt-file",
        _data(IMAGES, "path={d}/folder_broken"),
        r"image .*b.png is unreadable or corrupt",
        r"remove or replace it",
    ),
    Case(
        "data-images-missing-path",
        _data(IMAGES, "path={d}/missing_folder"),
        r"missing_folder does not exist",
        r"set data.path",
    ),
    Case(
        "data-labels-missing-rows-array",
        _data(IMAGES, "path={d}/good6.npy", "labels={d}/labels5.csv", "factor_columns=[size]"),
        r"has 5 label rows but .* holds 6 images",
        r"one row per image",
    ),
    Case(
        "data-labels-missing-row-folder",
        _data(IMAGES, "path={d}/folder", "labels={d}/folder_labels_missing_row.csv", "factor_columns=[size]"),
        r"has no row for image 'img2.png'",
        r"add rows or remove the images",
    ),
    Case(
        "data-labels-duplicate-row",
        _data(IMAGES, "path={d}/folder", "labels={d}/folder_labels_duplicate.csv", "factor_columns=[size]"),
        r"names file 'img1.png' twice",
        r"keep one row per image",
    ),
    Case(
        "data-labels-no-file-column",
        _data(IMAGES, "path={d}/folder", "labels={d}/folder_labels_no_file.csv", "factor_columns=[size]"),
        r"has no 'file' column",
        r"must name each image's file",
    ),
    Case(
        "data-labels-nan-weak",
        _data(IMAGES, "path={d}/good6.npy", "labels={d}/labels_nan_weak.csv", "weak_columns=[pose]"),
        r"weak column 'pose' has 'nan' at line 5",
        r"fix or drop the row",
    ),
    Case(
        "data-labels-text-weak",
        _data(IMAGES, "path={d}/good6.npy", "labels={d}/labels_text_weak.csv", "weak_columns=[pose]"),
        r"weak column 'pose' has 'left' at line 4",
        r"fix or drop the row",
    ),
    Case(
        "data-labels-nan-factor",
        _data(IMAGES, "path={d}/good6.npy", "labels={d}/labels_nan_factor.csv", "factor_columns=[size]"),
        r"factor column 'size' has 'nan' at line 6",
        r"use a finite value or drop the row",
    ),
    Case(
        "data-labels-empty-factor-cell",
        _data(IMAGES, "path={d}/good6.npy", "labels={d}/labels_empty_factor.csv", "factor_columns=[size]"),
        r"factor column 'size' is empty at line 3",
        r"fill it in or drop the row",
    ),
    Case(
        "data-labels-short-row",
        _data(IMAGES, "path={d}/good6.npy", "labels={d}/labels_short_row.csv", "factor_columns=[size]"),
        r"line 4 has 1 fields, the header has 2",
        r"fix that row",
    ),
    Case(
        "data-labels-unknown-column",
        _data(IMAGES, "path={d}/good6.npy", "labels={d}/labels6.csv", "factor_columns=[sise]"),
        r"column 'sise' is not in .*labels6.csv; did you mean 'size'\?",
        r"\? its columns are: size, pose$",
    ),
    Case(
        "data-labels-not-utf8",
        _data(IMAGES, "path={d}/good6.npy", "labels={d}/labels_latin1.csv", "factor_columns=[size]"),
        r"is not UTF-8 text",
        r"save it as UTF-8 CSV",
    ),
    Case(
        "data-labels-empty-file",
        _data(IMAGES, "path={d}/good6.npy", "labels={d}/labels_empty.csv", "factor_columns=[size]"),
        r"labels_empty.csv is empty",
        r"needs a header row",
    ),
    Case(
        "data-labels-missing-file",
        _data(IMAGES, "path={d}/good6.npy", "labels={d}/nope.csv", "factor_columns=[size]"),
        r"labels file .*nope.csv does not exist",
        r"set data.labels",
    ),
    Case(
        "data-columns-without-labels",
        _data(IMAGES, "path={d}/good6.npy", "factor_columns=[size]"),
        r"columns size were asked for but data.labels is empty",
        r"set it to a CSV",
    ),
    Case(
        "data-fewer-images-than-clusters",
        _train_cfg(
            "clusters",
            {
                "gating": {
                    "partitions": [
                        {"name": "pos", "size": 4, "factors": ["x", "y"], "sampler": "cluster", "clusters": 500}
                    ]
                }
            },
        ),
        r"500 clusters requested but the dataset has only 200 images",
        r"use about 2-4 \(the paper's 50-80 images per cluster; docs/pairs.md\)",
    ),
    Case(
        "data-partition-column-not-loaded",
        _train_cfg(
            "not_loaded",
            {
                "data": {"name": "images", "path": "data/good6.npy", "labels": "data/labels6.csv"},
                "train": {"batch_size": 2},
                "gating": {"partitions": [{"name": "pos", "size": 4, "factors": ["size"]}]},
            },
        ),
        r"partition 'pos': 'size' is a column of data/labels6.csv but not in data.factor_columns",
        r"add it there \(data.factor_columns=\[\.\.\., size\]\)",
    ),
    Case("data-stride-on-non-grid", _data("ellipses", "size=200", "stride.x=2"), r"full-grid", r"stride"),
    # ---- command line
    Case(
        "cli-evaluate-missing-run-dir",
        _cmd("evaluate", "{ws}/no-such-run", "--preset", "fast", "--device", "cpu"),
        r"run directory '.*no-such-run' does not exist",
        r"check the path",
    ),
    Case(
        "cli-resume-missing-run-dir",
        _cmd("train", "--resume", "{ws}/no-such-run"),
        r"run directory '.*no-such-run' does not exist",
        r"check the path",
    ),
    Case(
        "cli-resume-finished-run",
        _cmd("train", "--resume", "{ws}/done"),
        r"run '.*done' already finished at step 10",
        r"score it with gatedvae evaluate .*done, or train longer in a new run",
    ),
    Case(
        "cli-resume-foreign-dir",
        _cmd("train", "--resume", "{ws}/foreign"),
        r"'.*foreign' is not a gatedvae run directory \(no config.yaml\)",
        r"check the path",
    ),
    Case(
        "cli-resume-alien-config",
        _cmd("train", "--resume", "{ws}/alien"),
        r"alien/config.yaml' is not a config this gatedvae can read \(unknown config key 'experiment'; valid keys",
        r"check the run directory's path",
    ),
    Case(
        "cli-resume-damaged-checkpoint",
        _cmd("train", "--resume", "{ws}/damaged"),
        r"checkpoint '.*step-000000010.safetensors' is damaged",
        r"move it out of .*checkpoints to use the checkpoint before it",
    ),
    Case(
        "cli-resume-checkpoint-of-another-model",
        _cmd("train", "--resume", "{ws}/mismatch"),
        r"does not fit this model \(0 missing and 0 unexpected tensors, 26 of another shape",
        r"was it written by another config\?",
    ),
    Case(
        "cli-resume-with-a-config",
        _cmd("train", "{ws}/good.yaml", "--resume", "{ws}/done"),
        r"--resume takes the config saved in the run directory",
        r"drop the config file",
    ),
    Case(
        "cli-train-into-existing-run",
        _cmd("train", "{ws}/good.yaml", "--run-dir", "{ws}/done"),
        r"run directory '.*done' already exists and is not empty",
        r"resume it with --resume .*done or choose another --run-dir",
    ),
    Case("cli-train-without-config", _cmd("train"), r"give a config file", r"--resume RUN_DIR"),
    Case(
        "cli-evaluate-untrained-run",
        _cmd("evaluate", "{ws}/untrained", "--preset", "fast", "--device", "cpu"),
        r"run .*untrained has no checkpoint yet",
        r"train it first",
    ),
    Case(
        "cli-evaluate-foreign-dir",
        _cmd("evaluate", "{ws}/foreign", "--preset", "fast", "--device", "cpu"),
        r"is not a gatedvae run directory",
        r"check the path",
    ),
    Case(
        "cli-evaluate-damaged-checkpoint",
        _cmd("evaluate", "{ws}/damaged", "--preset", "fast", "--device", "cpu"),
        r"checkpoint '.*step-000000010.safetensors' is damaged",
        r"move it out of .*checkpoints to use the checkpoint before it",
    ),
    Case(
        "cli-evaluate-unknown-metric",
        _cmd("evaluate", "{ws}/done", "--preset", "fast", "--metrics", "dci,mgi", "--device", "cpu"),
        r"unknown metric 'mgi'",
        r"did you mean 'mig'\? metrics: ",
    ),
    Case(
        "cli-quickstart-zero-steps",
        _cmd("quickstart", "--steps", "0", "--out", "{ws}/qs"),
        r"--steps must be at least 1, got 0",
        r"at least 1",
    ),
    Case("cli-data-unknown-dataset", _data("svhn"), r"'svhn' is not one of", r"'dsprites'"),
]


def test_the_corpus_has_at_least_40_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


# Bad input only on a machine without CUDA: where CUDA is available, train.device=cuda is valid.
WITHOUT_CUDA_ONLY = {"config-cuda-missing"}


def _param(case: Case):
    marks = ()
    if case.id in WITHOUT_CUDA_ONLY:
        marks = pytest.mark.skipif(cuda_available(), reason="CUDA is available here, so train.device=cuda is valid")
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_is_refused_with_one_line(case, ws, capsys, monkeypatch):
    monkeypatch.chdir(ws)
    argv = case.argv(ws)  # may write the case's own config file into ws/cases
    before = _digest(ws)
    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert re.search(case.problem, err), err
    assert re.search(case.way_out, err), err
    assert _digest(ws) == before  # nothing of an existing run (or any other file) changed
    assert not (ws / "new-run").exists()  # a refused training leaves no run directory behind
    assert not (ws / "qs").exists()


def test_a_few_cases_in_a_fresh_interpreter(ws):
    """The same contract through the installed entry point, stderr as the user sees it."""
    import subprocess
    import sys

    picks = {c.id: c for c in CASES}
    for cid in ("config-unknown-nested-key", "data-dsprites-truncated-npz", "cli-resume-finished-run"):
        case = picks[cid]
        before = _digest(ws)
        r = subprocess.run(
            [sys.executable, "-m", "gatedvae", *case.argv(ws)], capture_output=True, text=True, cwd=ws, timeout=120
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1 and re.search(case.problem, r.stderr), r.stderr
        assert _digest(ws) == before


def test_accepted_on_purpose(ws, capsys):
    """Inputs that look odd but are valid, so they are not in the corpus: a folder of images of
    mixed sizes (every image is resized to data.image_size) and text in a *factor* column
    (categories)."""
    from PIL import Image

    d = ws / "accepted"
    d.mkdir(exist_ok=True)
    _png(d / "a.png", (8, 8))
    _png(d / "b.png", (20, 12))
    _png(d / "c.png", (64, 64))
    _csv(ws / "accepted.csv", "file,colour", ["a.png,red", "b.png,blue", "c.png,red"])
    rc = cli.main(
        [
            "data",
            "describe",
            "images",
            f"path={d}",
            f"labels={ws / 'accepted.csv'}",
            "factor_columns=[colour]",
            "image_size=16",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "3 images of 1x16x16" in out and "factor colour" in out
    assert Image.open(d / "b.png").size == (20, 12)  # inputs are read, never rewritten
