"""The face experiment: procedural faces, tracker-like weak labels, cluster pairs, the real-data
route, encoding a partition, and the face-study scores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gatedvae import load_run
from gatedvae.cli import main
from gatedvae.config import Config, DataConfig, GatingConfig, ModelConfig, PartitionConfig, TrainConfig, load_config
from gatedvae.data import build_dataset, make_sampler
from gatedvae.data.faces import (
    AU_COLUMNS,
    FACE_SPACE,
    LABEL_COLUMNS,
    export_faces,
    make_faces,
    paper_cluster_counts,
    render_faces,
    tracker_labels,
)
from gatedvae.errors import ConfigError, DataError, PartitionError
from gatedvae.face_study import best_split, group_shares, partition_informativeness, score_run
from gatedvae.train import train

SMALL = {"yaw": 4, "pitch": 2, "smile": 2, "mouth": 3, "width": 2, "skin": 2, "hair": 2}  # 3,888 images
NEUTRAL = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 0.0, 0.0])  # frontal, neutral, short hair


@pytest.fixture(scope="module")
def small():
    return make_faces(stride=SMALL, pose_noise=4.0, au_noise=0.5, seed=3)


def vary(k: int, values) -> np.ndarray:
    v = np.tile(NEUTRAL, (len(values), 1))  # (n, 9)
    v[:, k] = values
    return v


def centroid(diff: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of mass of an absolute difference image (H, W)."""
    w = np.abs(diff.astype(np.float64))
    rows, cols = np.indices(w.shape)
    return float((w * rows).sum() / w.sum()), float((w * cols).sum() / w.sum())


# ------------------------------------------------------------------------------- the images
def test_grid_is_deterministic_and_equals_the_renderer(small):
    again = make_faces(stride=SMALL, pose_noise=4.0, au_noise=0.5, seed=3)
    assert len(small) == 3888 and small.is_grid and small.image_shape == (1, 64, 64)
    assert np.array_equal(small.store.images.numpy(), again.store.images.numpy())
    assert np.array_equal(small.weak, again.weak)
    idx = np.random.default_rng(0).choice(len(small), size=40, replace=False)
    values = small.factor_space.to_values(small.factors_of(idx))  # (40, 9)
    assert np.array_equal(small.store.images.numpy()[idx], render_faces(values))  # image i is a function of its factors


def test_rgb_option_and_its_luma_is_close_to_gray():
    v = vary(0, [-40.0, 0.0, 40.0])
    rgb = render_faces(v, color="rgb").astype(np.float64)  # (3, 3, 64, 64)
    gray = render_faces(v).astype(np.float64)  # (3, 1, 64, 64)
    assert rgb.shape == (3, 3, 64, 64) and gray.shape == (3, 1, 64, 64)
    luma = np.tensordot([0.299, 0.587, 0.114], rgb, axes=([0], [1]))  # (3, 64, 64)
    assert np.abs(luma - gray[:, 0]).mean() < 1.0


def test_every_factor_changes_the_image_where_it_should():
    # each class of each factor gives a different image
    for k, values in enumerate(FACE_SPACE.values):
        imgs = render_faces(vary(k, values)).reshape(len(values), -1).astype(np.int64)
        for a in range(len(values)):
            for b in range(a + 1, len(values)):
                assert np.abs(imgs[a] - imgs[b]).sum() > 0, (FACE_SPACE.names[k], a, b)
    # mouth and smile act on the lower face, brows and eyes on the upper face
    rows = {}
    for name, k, lo, hi in (
        ("smile", 2, -1.0, 1.0),
        ("mouth", 3, 0.0, 1.0),
        ("brow", 4, -1.0, 1.0),
        ("eyes", 5, 0.0, 1.0),
    ):
        a, b = render_faces(vary(k, [lo, hi]))[:, 0].astype(np.int64)
        rows[name] = centroid(a - b)[0]
    assert min(rows["smile"], rows["mouth"]) > 36 > 30 > max(rows["brow"], rows["eyes"])
    assert rows["brow"] < rows["eyes"]

    # the crops are aligned like a tracker's: the eyes stay put while the head turns around them;
    # yaw +40 (the nose turns to the viewer's right) moves the head left, pitch +20 (the head
    # tilts down) moves it up
    def eyes_centre(yaw, pitch):
        """Midpoint of the two eyes' centres (each from the change of opening them wide)."""
        v = np.tile(NEUTRAL, (2, 1))
        v[:, 0], v[:, 1], v[:, 5] = yaw, pitch, [0.0, 1.0]
        a, b = render_faces(v)[:, 0].astype(np.int64)
        left, right = centroid((a - b)[:, :32]), centroid((a - b)[:, 32:])
        return np.array([(left[0] + right[0]) / 2, (left[1] + right[1] + 32) / 2])

    # (the alignment point lies on the face between the eyes, a little in front of the eyes'
    # centres, so these drift by under 2 px at the steepest poses)
    for yaw, pitch in ((40, 0), (-40, 0), (0, 20), (0, -20)):
        assert np.abs(eyes_centre(yaw, pitch) - eyes_centre(0, 0)).max() < 2.0, (yaw, pitch)
    background = np.rint(255 * (0.299 * 0.52 + 0.587 * 0.60 + 0.114 * 0.70))

    def head_centre(yaw, pitch):
        v = NEUTRAL.copy()
        v[0], v[1] = yaw, pitch
        return np.array(centroid(render_faces(v[None])[0, 0] != background))

    assert head_centre(40, 0)[1] < head_centre(0, 0)[1] - 4 < head_centre(-40, 0)[1] - 8
    assert head_centre(0, 20)[0] < head_centre(0, 0)[0] - 2 < head_centre(0, -20)[0] - 4
    # darker skin tone: a darker face; a wider face: fewer background pixels; more hair: more dark pixels
    skin = render_faces(vary(7, [0.0, 1.0, 2.0]))[:, 0].astype(np.float64)
    assert skin[0].mean() > skin[1].mean() > skin[2].mean()
    width = render_faces(vary(6, [0.88, 1.0, 1.12]))[:, 0]
    bg = [(w == background).sum() for w in width]
    assert bg[0] > bg[1] > bg[2]
    hair = render_faces(vary(8, [0.0, 1.0, 2.0]))[:, 0]
    dark = [(h < 40).sum() for h in hair]
    assert dark[0] < dark[1] < dark[2]


def test_renderer_refuses_bad_values():
    with pytest.raises(DataError, match="yaw must lie in"):
        render_faces(vary(0, [90.0]))
    with pytest.raises(DataError, match="hair must be 0"):
        render_faces(vary(8, [1.5]))
    with pytest.raises(DataError, match="shape"):
        render_faces(np.zeros((2, 3)))
    with pytest.raises(DataError, match="unknown factor 'yw'"):
        make_faces(stride={"yw": 2})


# ------------------------------------------------------------------------------- the labels
def test_tracker_labels_match_the_true_factors_at_the_configured_noise():
    index = np.random.default_rng(0).choice(len(FACE_SPACE), size=60_000, replace=False)
    values = FACE_SPACE.to_values(FACE_SPACE.to_factors(index))  # (60000, 9)
    for noise in (0.0, 2.0, 6.0):
        w = tracker_labels(values, index, pose_noise=noise, au_noise=0.0, seed=1)
        err_yaw = np.rad2deg(w[:, LABEL_COLUMNS.index("pose_Ry")]) - values[:, 0]
        err_pitch = np.rad2deg(w[:, LABEL_COLUMNS.index("pose_Rx")]) - values[:, 1]
        assert abs(err_yaw.std() - noise) <= 0.02 * noise + 1e-9 and abs(err_pitch.std() - noise) <= 0.02 * noise + 1e-9
        assert abs(err_yaw.mean()) < 0.1 and abs(err_pitch.mean()) < 0.1
        # correlation with the truth is the signal / (signal + noise) ratio it should be
        expect = values[:, 0].std() / np.sqrt(values[:, 0].var() + noise**2)
        assert abs(np.corrcoef(w[:, LABEL_COLUMNS.index("pose_Ry")], values[:, 0])[0, 1] - expect) < 0.005
    # action units: exact without noise, correlated but noisy with it, clipped to OpenFace's 0..5
    clean = tracker_labels(values, index, pose_noise=0.0, au_noise=0.0)
    au12 = clean[:, LABEL_COLUMNS.index("AU12_r")]
    assert np.allclose(au12, 5 * np.maximum(values[:, 2], 0))
    assert np.allclose(clean[:, LABEL_COLUMNS.index("AU25_r")], 5 * values[:, 3])
    noisy = tracker_labels(values, index, pose_noise=3.0, au_noise=1.0)
    aus = noisy[:, [LABEL_COLUMNS.index(c) for c in AU_COLUMNS]]
    assert aus.min() >= 0.0 and aus.max() <= 5.0
    r = np.corrcoef(noisy[:, LABEL_COLUMNS.index("AU12_r")], values[:, 2])[0, 1]
    assert 0.6 < r < 0.95
    assert np.abs(noisy[:, LABEL_COLUMNS.index("pose_Rz")]).max() > 0  # roll: noise only


def test_labels_depend_only_on_seed_and_index(small):
    _, index = FACE_SPACE.subspace(SMALL)
    values = FACE_SPACE.to_values(FACE_SPACE.to_factors(index))
    assert np.array_equal(small.weak, tracker_labels(values, index, pose_noise=4.0, au_noise=0.5, seed=3))
    other = tracker_labels(values, index, pose_noise=4.0, au_noise=0.5, seed=4)
    assert not np.array_equal(small.weak, other)
    assert small.weak_names == LABEL_COLUMNS


def test_paper_cluster_counts_scale_with_the_dataset():
    assert paper_cluster_counts(202_599) == {"pose": 2500, "expression": 4000}
    assert paper_cluster_counts(218_700) == {"pose": 2699, "expression": 4318}
    assert paper_cluster_counts(10) == {"pose": 2, "expression": 2}


def test_faces_through_the_config_and_the_cli(capsys):
    ds = build_dataset(DataConfig(name="faces", stride=dict(SMALL, brow=3, eyes=3), pose_noise=0.0, au_noise=0.0))
    assert len(ds) == 3888 // 9 and ds.weak_names == LABEL_COLUMNS
    yaw = np.rad2deg(ds.weak[:, LABEL_COLUMNS.index("pose_Ry")])
    assert np.allclose(yaw, ds.factor_space.to_values(ds.factors)[:, 0])
    with pytest.raises(ConfigError, match="pose_noise"):
        DataConfig(name="faces", pose_noise=-1.0)
    assert (
        main(
            [
                "data",
                "describe",
                "faces",
                "stride.yaw=4",
                "stride.pitch=4",
                "stride.smile=4",
                "stride.mouth=3",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "faces: 5,832 images of 1x64x64" in out and "weak   AU12_r" in out


# ------------------------------------------------------------------------------- pairs
def test_cluster_pairs_share_a_cluster_and_mostly_the_true_pose(small):
    rng = np.random.default_rng(0)
    pose = PartitionConfig(name="pose", size=6, factors=("pose_Rx", "pose_Ry"), sampler="cluster", clusters=9)
    sampler = make_sampler(small, pose, rng)
    pairs = sampler.sample(4000, rng)
    assert np.array_equal(sampler.labels[pairs.input], sampler.labels[pairs.target])
    fi, ft = small.factors_of(pairs.input), small.factors_of(pairs.target)
    agree = (fi == ft).mean(axis=0)  # (9,)
    # 9 clusters of (pitch, yaw) labels with 4 degree noise over a 3 x 3 grid of poses 20-40 degrees apart
    assert agree[0] > 0.97 and agree[1] > 0.9
    assert np.all(agree[2:] < 0.6)  # expression and appearance: chance (1/3 or 1/2)
    # 54 expression combinations (3 x 2 x 3 x 3) in this subset, AU noise 0.5 on a 0..5 scale
    expr = PartitionConfig(name="expression", size=18, factors=AU_COLUMNS, sampler="cluster", clusters=54)
    es = make_sampler(small, expr, rng)
    ep = es.sample(4000, rng)
    assert np.array_equal(es.labels[ep.input], es.labels[ep.target])
    agree = (small.factors_of(ep.input) == small.factors_of(ep.target)).mean(axis=0)
    assert np.all(agree[2:6] > 0.7) and agree[2:6].mean() > 0.85 and np.all(agree[:2] < 0.5)


# ------------------------------------------------------------------------------- the real-data route
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces_route")
    written = export_faces(root / "faces", root / "faces.csv", n=64, seed=5)
    config = load_config(
        "configs/faces_from_labels.yaml",
        [
            f"data.path={root / 'faces'}",
            f"data.labels={root / 'faces.csv'}",
            "gating.partitions.0.clusters=4",
            "gating.partitions.1.clusters=6",
            "train.steps=4",
            "train.batch_size=16",
            "train.checkpoint_every=4",
            "train.log_every=2",
            "train.threads=1",
            "train.device=cpu",
            "model.hidden=64",
        ],
    )
    run = root / "run"
    summary = train(config, run, quiet=True, tensorboard=False)
    return root, run, written, summary


def test_export_writes_the_grid_images_and_tracker_columns(folder_run):
    root, _, written, _ = folder_run
    with open(root / "faces.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 64 and set(LABEL_COLUMNS) <= set(rows[0]) and "file" in rows[0]
    img = np.asarray(Image.open(root / "faces" / rows[0]["file"]))
    assert np.array_equal(img, render_faces(FACE_SPACE.to_values(FACE_SPACE.to_factors(written[:1])))[0, 0])
    values = FACE_SPACE.to_values(FACE_SPACE.to_factors(written))
    w = tracker_labels(values, written, seed=5)
    assert np.allclose([float(r["AU12_r"]) for r in rows], w[:, LABEL_COLUMNS.index("AU12_r")], atol=1e-6)


def test_real_data_route_trains_and_encodes(folder_run, tmp_path, capsys):
    root, run, _, summary = folder_run
    assert summary["steps"] == 4 and np.isfinite(summary["final"]["total"])
    trained = load_run(run)
    assert list(trained.partitions) == ["pose", "expression"]
    z = trained.encode(root / "faces", partition="expression")
    assert z.shape == (64, 18) and z.dtype == np.float32 and np.isfinite(z).all()
    images = np.stack([np.asarray(Image.open(p)) for p in sorted((root / "faces").iterdir())])  # (64, 64, 64) uint8
    assert np.allclose(trained.encode(images, partition="expression"), z, atol=1e-5)
    assert trained.encode(images[:5], partition="pose").shape == (5, 6)
    assert trained.encode(images[:5]).shape == (5, 24)
    # the command: .npy and .csv, codes of the right shape
    out = tmp_path / "codes.npy"
    assert main(["encode", str(run), str(root / "faces"), "--partition", "expression", "--out", str(out)]) == 0
    assert np.allclose(np.load(out), z, atol=1e-5)
    out_csv = tmp_path / "pose.csv"
    assert main(["encode", str(run), str(root / "faces"), "--partition", "pose", "--out", str(out_csv)]) == 0
    with open(out_csv, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["file", *(f"pose_{j}" for j in range(6))] and len(rows) == 65 and rows[1][0] == "face_000000.png"
    assert "64 x 6 codes (partition pose, latent dims 0..5" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, match",
    [
        (["--partition", "expresion"], "unknown partition 'expresion'; did you mean 'expression'?"),
        (["--out", "codes.txt"], "use a .npy or .csv"),
        (["--images", "/nonexistent/faces"], "do not exist"),
    ],
)
def test_encode_user_errors_are_one_line(folder_run, tmp_path, capsys, args, match):
    root, run, _, _ = folder_run
    images = str(root / "faces")
    if args[0] == "--images":
        images, args = args[1], []
    out = ["--out", str(tmp_path / "c.npy")] if "--out" not in args else []
    code = main(["encode", str(run), images, *args, *out])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "c.npy").exists()


# ------------------------------------------------------------------------------- issue 16: the user's first hour
def test_exported_files_are_in_random_order(folder_run):
    root, _, written, _ = folder_run
    with open(root / "faces.csv", newline="") as fh:
        yaw = np.array([float(r["true_yaw"]) for r in csv.DictReader(fh)])  # (64,) in file order
    first = yaw[: len(yaw) // 10 + 1]  # the first 10% of the files, as a user subsets by name
    assert first.min() <= -20 and first.max() >= 20  # spans the yaw range, not one pose
    assert abs(np.corrcoef(np.arange(len(yaw)), yaw)[0, 1]) < 0.3 and not np.all(np.diff(written) >= 0)
    again = export_faces(root / "again", root / "again.csv", n=64, seed=5)
    assert np.array_equal(again, written)  # the order is drawn from the seed


def test_readme_preview_example_runs_on_an_exported_folder(folder_run, tmp_path, capsys):
    import shlex

    root, _, _, _ = folder_run
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (line,) = [x for x in readme.splitlines() if x.startswith(".venv/bin/gatedvae data preview images ")]
    args = shlex.split(line)[1:]
    assert "path=faces/" in args and "labels=faces.csv" in args  # the names the README's export line writes
    assert "export_faces('faces/', 'faces.csv'" in readme
    args = [
        {"path=faces/": f"path={root / 'faces'}", "labels=faces.csv": f"labels={root / 'faces.csv'}"}.get(a, a)
        for a in args
    ]
    out = tmp_path / "preview.png"
    assert main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 1000


def _weak_only(n: int) -> object:
    from gatedvae.data import FactorDataset, FactorSpace, Uint8Store

    rng = np.random.default_rng(0)
    return FactorDataset(
        "own",
        Uint8Store(np.zeros((n, 1, 4, 4), np.uint8)),
        FactorSpace([], []),
        factors=np.zeros((n, 0), dtype=np.int64),
        weak=rng.normal(size=(n, 2)),
        weak_names=["pose_Rx", "pose_Ry"],
    )


def test_cluster_counts_say_what_is_sensible_and_warn_when_too_many():
    import warnings

    ds = _weak_only(300)
    rng = np.random.default_rng(0)

    def part(clusters: int) -> PartitionConfig:
        return PartitionConfig(
            name="pose", size=2, factors=("pose_Rx", "pose_Ry"), sampler="cluster", clusters=clusters
        )

    with pytest.raises(PartitionError) as exc:
        make_sampler(ds, part(301), rng)
    assert str(exc.value) == (
        "partition 'pose': 301 clusters requested but the dataset has only 300 images; "
        "use about 4-6 (the paper's 50-80 images per cluster; docs/pairs.md)"
    )
    with pytest.warns(RuntimeWarning) as caught:
        make_sampler(ds, part(100), rng)
    (w,) = caught
    assert str(w.message) == (
        "partition 'pose': 100 clusters of 300 images hold 3.0 images each, so 33% of the pairs are an image "
        "with itself; use about 4-6 (the paper's 50-80 images per cluster; docs/pairs.md)"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_sampler(ds, part(30), rng)  # 10 images per cluster: no warning


def test_a_csv_column_that_is_not_loaded_says_which_setting_to_add_it_to(folder_run):
    from gatedvae.data.images import load_images

    root, _, _, _ = folder_run
    labels = root / "faces.csv"
    ds = load_images(root / "faces", labels=labels, weak_columns=("pose_Rx", "pose_Ry"), image_size=16)
    rng = np.random.default_rng(0)
    pose = PartitionConfig(name="pose", size=2, factors=("pose_Rx", "pose_Rz"), sampler="cluster", clusters=4)
    with pytest.raises(PartitionError) as exc:
        make_sampler(ds, pose, rng)
    assert str(exc.value) == (
        f"partition 'pose': 'pose_Rz' is a column of {labels} but not in data.weak_columns; "
        "add it there (data.weak_columns=[..., pose_Rz])"
    )
    exact = PartitionConfig(name="pose", size=2, factors=("true_yaw", "true_pitch"), sampler="exact")
    with pytest.raises(PartitionError) as exc:
        make_sampler(ds, exact, rng)
    assert str(exc.value) == (
        f"partition 'pose': 'true_yaw', 'true_pitch' are columns of {labels} but not in data.factor_columns; "
        "add them there (data.factor_columns=[..., true_yaw, true_pitch])"
    )
    typo = PartitionConfig(name="pose", size=2, factors=("pose_Rxx",), sampler="cluster", clusters=4)
    with pytest.raises(PartitionError) as exc:
        make_sampler(ds, typo, rng)
    assert str(exc.value) == (
        "partition 'pose': unknown label column 'pose_Rxx' for clustering; did you mean 'pose_Rx'? "
        "the dataset has: pose_Rx, pose_Ry"
    )


def test_evaluating_own_faces_scores_what_needs_no_factors_and_hints_otherwise(folder_run, tmp_path, capsys):
    import shutil

    from gatedvae.evaluation import evaluate_run

    _, run, _, _ = folder_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["evaluate", str(copy), "--metrics", "mig", "--preset", "fast", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: faces: no factor varies over the sampled images, and these metrics need factors: mig; run "
        "--metrics unsupervised,reconstruction (they need none) or name discrete label columns in data.factor_columns\n"
    )
    # no --metrics: skip what needs factors
    doc = evaluate_run(copy, preset="fast", progress=False, figures=False, device="cpu")
    assert set(doc["results"]) == {"unsupervised", "reconstruction"} and "mig" in doc["skipped"]


def test_an_ungated_run_names_its_only_partition():
    import torch

    from gatedvae.encode import TrainedRun

    trained = TrainedRun(Path("r"), Config(), None, 0, (1, 8, 8), {}, torch.device("cpu"))
    with pytest.raises(PartitionError) as exc:
        trained.dims("expression")
    assert str(exc.value) == "unknown partition 'expression'; this run is not gated, so its only partition is 'all'"
    gated = TrainedRun(Path("r"), Config(), None, 0, (1, 8, 8), {"pose": slice(0, 2)}, torch.device("cpu"))
    with pytest.raises(PartitionError) as exc:
        gated.dims("xyz")
    assert str(exc.value) == "unknown partition 'xyz'; partitions of this run: pose, all"


# ------------------------------------------------------------------------------- the study's scores
def test_partition_scores_on_hand_made_codes():
    rng = np.random.default_rng(0)
    n = 3000
    factors = rng.integers(0, 5, size=(n, 3)).astype(np.float64)  # (n, 3): pose-like, expression-like, identity-like
    codes = np.concatenate(
        [
            factors[:, :1] + 0.05 * rng.normal(size=(n, 1)),
            rng.normal(size=(n, 1)),
            factors[:, 1:2] + 0.05 * rng.normal(size=(n, 1)),
            rng.normal(size=(n, 2)),
        ],
        axis=1,
    )  # (n, 5)
    units = [np.array([0, 1]), np.array([2, 3, 4])]
    info = partition_informativeness(codes, factors, units, rng)
    assert info["r2"].shape == (2, 3)
    assert info["r2"][0, 0] > 0.95 and info["r2"][1, 1] > 0.95  # each factor from its own unit
    assert info["r2"][1, 0] < 0.1 and info["r2"][0, 1] < 0.1 and info["r2"][:, 2].max() < 0.1  # nothing leaks
    groups = {"pose": ("p",), "expression": ("e",), "identity": ("i",)}
    shares = group_shares(np.array([[3.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), ["p", "e", "i"], ["pose", "expression"], groups)
    assert shares["pose"] == {"pose": 0.75, "expression": 0.25} and shares["expression"]["expression"] == 0.5
    assert np.isnan(shares["identity"]["pose"])  # nothing predicts it
    imp = np.zeros((5, 3))
    imp[[1, 3], 0] = [2.0, 1.0]
    assert best_split(imp, ["yaw", "smile", "skin"], 2, group=("yaw",)).tolist() == [1, 3]


def test_face_study_scores_a_run(small, tmp_path, capsys):
    config = Config(
        data=DataConfig(name="faces", stride=SMALL, pose_noise=4.0, au_noise=0.5, seed=3),
        model=ModelConfig(name="vae", net="mlp", latent_dim=8, hidden=32),
        gating=GatingConfig(
            enabled=True,
            partitions=(
                PartitionConfig(name="pose", size=2, factors=("pose_Rx", "pose_Ry"), sampler="cluster", clusters=9),
                PartitionConfig(name="expression", size=6, factors=AU_COLUMNS, sampler="cluster", clusters=20),
            ),
        ),
        train=TrainConfig(steps=3, batch_size=16, checkpoint_every=3, log_every=1, threads=1, device="cpu"),
    )
    run = tmp_path / "faces_gated_s0"
    train(config, run, quiet=True, tensorboard=False, dataset=small)
    doc = score_run(run, preset="fast", seed=0, images=800)
    saved = json.loads((run / "face_scores.json").read_text())
    assert saved["summary"] == doc["summary"] and doc["gated"] and doc["images"] == 800
    s = doc["summary"]
    for key in ("share.pose.pose", "share.pose.expression", "r2.pose.pose", "r2.pose.expression", "r2.expression.pose"):
        assert np.isfinite(s[key])
    assert abs(s["share.pose.pose"] + s["share.pose.expression"] - 1) < 1e-9
    assert (run / "figures" / "face_traversals.png").is_file() and (run / "figures" / "face_swap.png").is_file()
    assert main(["face-study", str(run), "--quiet"]) == 0  # already scored: only the table
    table = capsys.readouterr().out
    assert table.startswith("| run | split | seeds |") and "| faces_gated | as trained | 1 |" in table


def test_face_study_refuses_other_data(folder_run, capsys):
    _, run, _, _ = folder_run
    assert main(["face-study", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "data.name=faces" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------- issue 16: what the codes carry
def _edit_head(run: Path, edit) -> None:
    """Apply ``edit(weight (48, F), bias (48,))`` in place to the encoder head of the run's checkpoint."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from gatedvae.checkpoint import latest_checkpoint

    path = latest_checkpoint(run / "checkpoints")[1]
    with safe_open(str(path), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    edit(tensors["model/encoder.head.linear.weight"], tensors["model/encoder.head.linear.bias"])
    save_file(tensors, str(path), metadata=meta)


@pytest.fixture
def collapsed_run(folder_run, tmp_path):
    """A copy of the tiny face run whose pose partition is active and whose expression partition is
    collapsed the way the face example's is: dims 6 and 7 have means that vary (variance 0.05,
    "active") but carry 0.025 nats; the other 16 are the prior (mean 0, variance 1)."""
    import shutil

    root, run, _, _ = folder_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    mu = load_run(copy).encode(root / "faces", warn=False)  # (64, 24)
    centre, spread = mu.mean(0), mu.std(0)  # (24,)

    def edit(w, b):
        for d in range(6):  # pose: means of variance 1, posterior variance e^-2: about 1 nat a dim
            w[d], b[d] = w[d] / float(spread[d]), (b[d] - float(centre[d])) / float(spread[d])
        w[24:30], b[24:30] = 0.0, -2.0
        w[6:24], b[6:24], w[30:48], b[30:48] = 0.0, 0.0, 0.0, 0.0  # expression: the prior
        for d in (6, 7):  # ... but for two dims whose means vary a little, like pose dim 0
            w[d], b[d] = w[0] * 0.05**0.5, b[0] * 0.05**0.5

    _edit_head(copy, edit)
    return root / "faces", copy


def test_encode_reports_activity_warns_on_a_collapsed_partition_and_drops_inactive_dims(
    collapsed_run, tmp_path, capsys
):
    """Issue 16: the face example's expression partition had collapsed (KL 0.52 nats in all) while
    its encoder means tracked yaw; encode must say how active each partition is, warn when the one
    asked for is collapsed, and offer to keep only the active dims."""
    from gatedvae.encode import CollapsedPartitionWarning

    images, run = collapsed_run
    trained = load_run(run)
    act = trained.activity(images)
    assert list(act) == ["pose", "expression"]
    expr, pose = act["expression"], act["pose"]
    assert expr.dims == 18 and expr.active.tolist() == [True, True] + [False] * 16 and expr.collapsed
    assert np.allclose(expr.variance[:2], 0.05, rtol=1e-3) and 0.02 < expr.kl.max() < 0.03
    assert pose.active.all() and not pose.collapsed and pose.kl.min() > 0.5
    with pytest.warns(CollapsedPartitionWarning, match=r"partition 'expression' is collapsed: its 18 dims carry"):
        z = trained.encode(images, partition="expression")
    assert z.shape == (64, 18)
    with pytest.warns(CollapsedPartitionWarning):
        assert trained.encode(images, partition="expression", active_only=True).shape == (64, 2)
    # the command: activity lines, the warning on stderr, --drop-inactive keeps dims 6 and 7 by name
    out = tmp_path / "codes.csv"
    args = ["encode", str(run), str(images), "--partition", "expression", "--out"]
    assert main([*args, str(out), "--drop-inactive"]) == 0
    captured = capsys.readouterr()
    assert "kept the active dims 6, 7" in captured.out
    assert "partition expression: 18 dims, 2 active (variance of the mean > 0.01 over 64 images)" in captured.out
    assert "partition pose: 6 dims, 6 active" in captured.out
    assert captured.err.startswith("warning: partition 'expression' is collapsed") and captured.err.count("\n") == 1
    with open(out, newline="") as fh:
        assert next(csv.reader(fh)) == ["file", "expression_0", "expression_1"]
    assert main(["encode", str(run), str(images), "--partition", "pose", "--out", str(tmp_path / "p.csv")]) == 0
    assert "warning" not in capsys.readouterr().err  # an active partition: no warning


def test_drop_inactive_with_no_active_dim_is_refused_in_one_line(collapsed_run, tmp_path, capsys):
    images, run = collapsed_run

    def silence(w, b):
        w[6:8], b[6:8] = 0.0, 0.0

    _edit_head(run, silence)
    out = tmp_path / "none.csv"
    code = main(["encode", str(run), str(images), "--partition", "expression", "--out", str(out), "--drop-inactive"])
    err = capsys.readouterr().err
    assert code == 2 and "has no active dims over these 64 images" in err and err.startswith("error: ")
    assert not out.exists()


def test_a_tall_traversal_figure_has_no_empty_band_under_its_title():
    """Issue 16: the face traversal figure (14 rows) had more than an inch of empty space between
    its title and its first row (the axes stayed at 88% of the figure's height)."""
    import matplotlib.pyplot as plt

    from gatedvae.viz.diagnostics import plot_image_rows

    images = np.zeros((14, 9, 1, 8, 8), dtype=np.float32)
    for cols in (None, [f"{v:.1f}" for v in np.linspace(-2, 2, 9)]):
        fig = plot_image_rows(images, [f"z{i}" for i in range(14)], title="traversals of image 0", col_labels=cols)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        title_bottom = fig._suptitle.get_window_extent(renderer).y0  # pixels from the bottom
        first_row = max(ax.get_tightbbox(renderer).y1 for ax in fig.axes)  # with its column labels
        gap = (title_bottom - first_row) / fig.dpi  # inches
        plt.close(fig)
        assert 0.0 <= gap < 0.25, gap
