"""The face study: does a model keep head pose and expression in separate latent partitions?

The Gated-VAE paper (``000_fc03c6fb001bc541.txt``, section IV-B) trains a VAE on CelebA with a
6-dim pose partition and an 18-dim expression partition, paired by k-means clusters of OpenFace
outputs, and can only judge the result by eye (its Figure 5) because CelebA has no ground
truth. On the procedural faces (:mod:`gatedvae.data.faces`) every image's pose, expression and
appearance are known, so the same question gets numbers. For one trained run,
:func:`score_run` encodes a sample of images (posterior means) and measures, per latent
*partition*:

* **importance shares** -- DCI of Eastwood & Williams with the paper's Lasso (alpha 0.02) and
  random forest (10 trees, depth 12), with the partitions as units
  (:func:`gatedvae.metrics.dci`, ``units=``): of each factor's importance, the share that lies in
  each partition, averaged over the factors of a group (pose: yaw, pitch; expression: smile,
  mouth, brow, eyes; identity: width, skin, hair). ``pose -> pose`` near 1 means pose is read
  from the pose partition; ``pose -> expression`` is the leak. Chance (importance spread
  evenly over the 24 dims) is 6/24 = 0.25 for the pose partition.
* **per-partition informativeness** -- a random forest of the same size predicts each factor
  from *one partition's codes only*; ``R^2 = 1 - NRMSE^2`` on held-out codes (1 = the factor is
  fully recoverable from that partition, 0 = not at all). ``R^2(pose | expression)`` is what a
  downstream user of the expression embedding would still be told about head pose.
  Computed twice: on the posterior *means* (the codes ``gatedvae encode`` gives) and on one
  *sample* ``z = mu + sigma * eps`` per image. They differ for dims the model switched off
  (KL near 0): their means still vary a little with the image, enough for a forest to read,
  but that variation is buried in the posterior noise, so it carries no information through
  the decoder. The samples' R^2 is the information a partition really transmits.
* **KL per partition** (nats, mean over the images): how much of the latent each partition uses.

Un-gated models have no partitions, so they are scored twice: with the same dims as the gated
layout (dims 0-5 "pose", 6-23 "expression", which is what a user gets without labels), and with
the *best* split the true factors allow: the 6 dims carrying most pose importance (random-forest
DCI) called "pose", the rest "expression" -- an oracle that favours the un-gated model.

Figures (``RUN/figures/``): ``face_traversals.png``, the paper's Figure 5 (every pose dim and
the 8 expression dims with the largest KL, swept over [-2, 2] from one encoded image), and
``face_swap.png``, the pose partition of the images on the left with everything else from the
images on top.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, to_dict
from .data.faces import FACE_GROUPS
from .errors import ConfigError, DataError, GatedVAEError
from .io import atomic_json
from .metrics.utils import check_codes, check_rng, seed_from, split_indices, standardize

__all__ = [
    "FACE_LAYOUT",
    "SIZES",
    "group_shares",
    "partition_informativeness",
    "best_split",
    "face_scores",
    "score_run",
    "summarise",
    "format_table",
]

#: The paper's latent layout (section IV-B): 6 pose dims, then 18 expression dims.
FACE_LAYOUT: tuple[tuple[str, int], ...] = (("pose", 6), ("expression", 18))
#: Images encoded per preset (DCI then fits on 80% of them, as in :mod:`gatedvae.evaluation.suite`).
SIZES: dict[str, int] = {"default": 12_500, "fast": 5_000}
FORMAT = "gatedvae-face-scores-1"
_FOREST = dict(n_estimators=10, max_depth=12)  # the paper's random forest


# --------------------------------------------------------------------------- pure scores
def group_shares(
    importance: np.ndarray,
    factor_names: Sequence[str],
    unit_names: Sequence[str],
    groups: Mapping[str, Sequence[str]] = FACE_GROUPS,
) -> dict[str, dict[str, float]]:
    """Share of each factor group's importance held by each unit.

    Args:
        importance: ``(P, K)`` non-negative importance of each unit (partition) for each factor.
        factor_names: the K factor names; unit_names: the P unit names.
        groups: group name -> factor names (factors absent from ``factor_names`` are skipped).

    Returns ``{group: {unit: share}}``: for each factor, its column normalised to sum 1 over
    the units, then averaged over the group's factors. A factor with zero total importance
    (nothing predicts it) is left out of the average; a group with no such factor gets NaN.
    """
    r = np.abs(np.asarray(importance, dtype=np.float64))  # (P, K)
    if r.shape != (len(unit_names), len(factor_names)):
        raise DataError(
            f"importance of shape {r.shape} does not fit {len(unit_names)} units and {len(factor_names)} factors"
        )
    col = r.sum(axis=0)  # (K,)
    out: dict[str, dict[str, float]] = {}
    for g, members in groups.items():
        ks = [factor_names.index(f) for f in members if f in factor_names and col[factor_names.index(f)] > 0]
        if not ks:
            out[g] = {u: float("nan") for u in unit_names}
            continue
        share = r[:, ks] / col[ks]  # (P, |g|)
        out[g] = {u: float(share[p].mean()) for p, u in enumerate(unit_names)}
    return out


def partition_informativeness(
    codes,
    factors,
    units: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    n_estimators: int = 10,
    max_depth: int = 12,
    train_frac: float = 0.8,
) -> dict:
    """How well each factor can be predicted from each unit's codes alone.

    For every unit ``p`` and factor ``k`` a random forest (the paper's 10 trees of depth 12)
    is fitted on a training split of ``codes[:, units[p]]`` (z-scored) to predict factor ``k``
    (z-scored); on the held-out rows ``NRMSE = sqrt(mean((v - v_hat)^2))`` in units of the
    factor's training std, and ``R^2 = 1 - NRMSE^2`` (1: perfectly predicted, 0: no better
    than the mean; can dip below 0). The split is drawn once from ``rng`` and shared by all fits.

    Returns ``{"r2": (P, K), "nrmse": (P, K), "n_train": int, "n_test": int}``.
    """
    codes = check_codes(codes)
    rng = check_rng(rng)
    factors = np.asarray(factors, dtype=np.float64)
    if factors.ndim != 2 or len(factors) != len(codes):
        raise DataError(f"factors: expected shape ({len(codes)}, K), got {factors.shape}")
    from sklearn.ensemble import RandomForestRegressor

    tr, te = split_indices(rng, len(codes), train_frac)
    y_tr, y_te = standardize(factors[tr], factors[te])  # (Ntr, K), (Nte, K)
    nrmse = np.zeros((len(units), factors.shape[1]))  # (P, K)
    for p, dims in enumerate(units):
        dims = np.asarray(dims, dtype=np.int64)
        x_tr, x_te = standardize(codes[tr][:, dims], codes[te][:, dims])
        for k in range(factors.shape[1]):
            forest = RandomForestRegressor(
                n_estimators=n_estimators, max_depth=max_depth, random_state=seed_from(rng), n_jobs=1
            )
            forest.fit(x_tr, y_tr[:, k])
            nrmse[p, k] = float(np.sqrt(np.mean((forest.predict(x_te) - y_te[:, k]) ** 2)))
    return {"r2": 1.0 - nrmse**2, "nrmse": nrmse, "n_train": int(tr.size), "n_test": int(te.size)}


def best_split(
    importance: np.ndarray, factor_names: Sequence[str], size: int, group: Sequence[str] = FACE_GROUPS["pose"]
) -> np.ndarray:
    """The ``size`` latent dims that carry most of a factor group's importance (sorted).

    ``importance`` is the ``(D, K)`` DCI importance; each factor's column is normalised to sum
    1 over the dims, the group's columns are summed, and the top ``size`` dims are returned.
    """
    r = np.abs(np.asarray(importance, dtype=np.float64))  # (D, K)
    ks = [factor_names.index(f) for f in group if f in factor_names]
    if not ks:
        raise DataError(f"none of the factors {list(group)} is among {list(factor_names)}")
    if not 1 <= size < r.shape[0]:
        raise ConfigError(f"best_split: size must lie in 1..{r.shape[0] - 1}, got {size}")
    col = r[:, ks].sum(axis=0)  # (|g|,)
    score = (r[:, ks] / np.where(col > 0, col, 1.0)).sum(axis=1)  # (D,)
    return np.sort(np.argsort(-score, kind="stable")[:size]).astype(np.int64)


def _summary(shares: dict, r2: np.ndarray, factor_names: Sequence[str], unit_names: Sequence[str]) -> dict[str, float]:
    """The headline numbers of one scoring: importance shares and group-mean R^2 per unit."""
    out: dict[str, float] = {}
    for g, per_unit in shares.items():
        for u, v in per_unit.items():
            out[f"share.{g}.{u}"] = v
    for g, members in FACE_GROUPS.items():
        ks = [factor_names.index(f) for f in members if f in factor_names]
        for p, u in enumerate(unit_names):
            out[f"r2.{g}.{u}"] = float(np.mean(r2[p, ks])) if ks else float("nan")
    return out


def _unit_scores(codes, logvar, factors, factor_names, names, unit_dims, shares, rng, train_frac):
    """Per-unit informativeness (means, and one posterior sample when ``logvar`` is given), KL per
    unit, and the summary with the importance ``shares``."""
    info = partition_informativeness(
        codes, factors, unit_dims, np.random.default_rng(seed_from(rng)), train_frac=train_frac, **_FOREST
    )
    out = {
        "r2": info["r2"],
        "nrmse": info["nrmse"],
        "units": list(names),
        "n_train": info["n_train"],
        "n_test": info["n_test"],
    }
    summary = _summary(shares, info["r2"], factor_names, names)
    if logvar is not None:
        kl = 0.5 * (codes**2 + np.exp(logvar) - logvar - 1.0)  # (N, M) KL(q(z|x) || N(0, I)) per dim
        for u, dims in zip(names, unit_dims, strict=True):
            summary[f"kl.{u}"] = float(kl[:, dims].sum(axis=1).mean())
        eps = np.random.default_rng(seed_from(rng)).standard_normal(codes.shape)  # (N, M)
        sampled = codes + np.exp(0.5 * logvar) * eps  # (N, M)
        info_s = partition_informativeness(
            sampled, factors, unit_dims, np.random.default_rng(seed_from(rng)), train_frac=train_frac, **_FOREST
        )
        out["r2_sampled"] = info_s["r2"]
        summary.update(
            {k.replace("r2.", "r2s.", 1): v for k, v in _summary({}, info_s["r2"], factor_names, names).items()}
        )
    return out, summary


def face_scores(
    codes,
    factors,
    factor_names: Sequence[str],
    units: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    *,
    logvar=None,
    train_frac: float = 0.8,
    extra_splits: bool = False,
) -> dict:
    """Every face-study score of one set of codes (pure: arrays in, numbers out).

    Args:
        codes: ``(N, M)`` posterior means.
        factors: ``(N, K)`` true factor classes (or values), named by ``factor_names``.
        units: partition name -> latent dims (the run's partitions, or a layout for un-gated runs).
        rng: the only randomness (splits, forests, the posterior sample).
        logvar: ``(N, M)`` posterior log-variances; adds the KL per unit (``kl.*``) and the R^2
            of one posterior sample per image (``r2s.*``) to the summary.
        extra_splits: also score the best 6-dim pose split (:func:`best_split`) -- for un-gated runs.

    Returns ``{"factor_names", "units", "dci": {"lasso": ..., "random_forest": ...},
    "informativeness": {...}, "summary": {...}}`` (and ``"best_split"`` with its own
    informativeness and summary when asked); arrays as numpy. Summary keys:
    ``share.<group>.<unit>`` (random-forest DCI; ``lasso_share.*`` with the Lasso),
    ``r2.<group>.<unit>`` (means), ``r2s.<group>.<unit>`` (samples), ``kl.<unit>``, ``dci_*``.
    """
    from .metrics.dci import dci

    codes = check_codes(codes)
    rng = check_rng(rng)
    names = list(units)
    unit_dims = [np.asarray(units[n], dtype=np.int64) for n in names]
    factor_names = list(factor_names)
    out: dict[str, Any] = {
        "factor_names": factor_names,
        "units": {n: d.tolist() for n, d in zip(names, unit_dims, strict=True)},
        "dci": {},
    }
    shares: dict[str, dict] = {}
    for reg in ("lasso", "random_forest"):
        res = dci(
            codes,
            factors,
            np.random.default_rng(seed_from(rng)),
            regressor=reg,
            alpha=0.02,
            train_frac=train_frac,
            units=unit_dims,
            **_FOREST,
        )
        shares[reg] = group_shares(res["partition"]["importance"], factor_names, names)
        out["dci"][reg] = {
            "disentanglement": res["disentanglement"],
            "completeness": res["completeness"],
            "informativeness": res["informativeness"],
            "informativeness_per_factor": res["informativeness_per_factor"],
            "importance": res["importance"],
            "partition_importance": res["partition"]["importance"],
            "partition_disentanglement": res["partition"]["disentanglement"],
            "shares": shares[reg],
        }
    if logvar is not None:
        logvar = check_codes(logvar, "logvar")
        if logvar.shape != codes.shape:
            raise DataError(f"logvar of shape {logvar.shape} does not match codes of shape {codes.shape}")
    info, summary = _unit_scores(
        codes, logvar, factors, factor_names, names, unit_dims, shares["random_forest"], rng, train_frac
    )
    out["informativeness"] = info
    summary.update(
        {
            f"lasso_{k}": v
            for k, v in _summary(shares["lasso"], info["r2"], factor_names, names).items()
            if k.startswith("share.")
        }
    )
    summary["dci_rf.disentanglement"] = out["dci"]["random_forest"]["disentanglement"]
    summary["dci_rf.completeness"] = out["dci"]["random_forest"]["completeness"]
    summary["dci_rf.informativeness"] = out["dci"]["random_forest"]["informativeness"]
    summary["dci_lasso.disentanglement"] = out["dci"]["lasso"]["disentanglement"]
    summary["dci_rf.partition_disentanglement"] = out["dci"]["random_forest"]["partition_disentanglement"]
    out["summary"] = summary
    if extra_splits and len(names) == 2:
        imp = out["dci"]["random_forest"]["importance"]  # (M, K)
        pose_dims = best_split(imp, factor_names, len(unit_dims[0]))
        rest = np.setdiff1d(np.arange(codes.shape[1]), pose_dims)
        bs_shares = group_shares(np.stack([imp[pose_dims].sum(axis=0), imp[rest].sum(axis=0)]), factor_names, names)
        bs_info, bs_summary = _unit_scores(
            codes, logvar, factors, factor_names, names, [pose_dims, rest], bs_shares, rng, train_frac
        )
        out["best_split"] = {
            "units": {names[0]: pose_dims.tolist(), names[1]: rest.tolist()},
            "shares": bs_shares,
            "informativeness": bs_info,
            "summary": bs_summary,
        }
    return out


# --------------------------------------------------------------------------- a run
def _units_of(config: Config) -> tuple[dict[str, np.ndarray], str]:
    """The partitions a run is scored with, and where they come from (``gated`` or ``layout``)."""
    m = config.model.latent_dim
    if config.gating.enabled and config.gating.partitions:
        units, start = {}, 0
        for p in config.gating.partitions:
            units[p.name] = np.arange(start, start + p.size)
            start += p.size
        return units, "gated"
    first = FACE_LAYOUT[0][1]
    if m <= first:
        raise ConfigError(
            f"an un-gated run needs more than {first} latent dims to be split into pose and expression; it has {m}"
        )
    return {FACE_LAYOUT[0][0]: np.arange(first), FACE_LAYOUT[1][0]: np.arange(first, m)}, "layout"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    return obj


def _prepare(run: Path):
    """Data and model of a face run with the latest weights (its pair samplers, k-means, are not built)."""
    from .run import load_run_config, load_trained

    config = load_run_config(run)
    if config.data.name != "faces":
        raise DataError(
            f"run {run} was trained on '{config.data.name}'; the face study needs a run on data.name=faces "
            "(for your own faces use gatedvae evaluate with factor columns)"
        )
    prep, step, _ = load_trained(run)  # the pair samplers (k-means) are built only if asked for
    return config, prep, step


@torch.no_grad()
def _decode(model, z: torch.Tensor) -> torch.Tensor:
    return model.mean_image(model.decode(z)).clamp(0, 1)  # (N, C, H, W)


def write_face_figures(
    prep,
    units: Mapping[str, np.ndarray],
    kl: np.ndarray,
    out_dir: str | os.PathLike,
    rng: np.random.Generator,
    steps: int = 9,
    span: float = 2.0,
    n_expression: int = 8,
    note: str = "",
) -> list[Path]:
    """Figure 5 of the paper (traversals) and a pose/expression swap grid, into ``out_dir``.

    ``note`` is added to both titles (e.g. that an un-gated run's "partitions" are only its dims
    0-5 and 6-23).
    """
    from .viz.diagnostics import plot_image_rows, plot_swap_grid, swap_codes
    from .viz.figures import traversal_images
    from .viz.pairs import save_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(units)
    pose, expr = np.asarray(units[names[0]]), np.asarray(units[names[1]])
    top = expr[np.argsort(-kl[expr], kind="stable")[:n_expression]]  # the most active expression dims
    rows = np.concatenate([pose, top])
    base = int(rng.integers(0, len(prep.dataset)))
    imgs = traversal_images(prep, base_index=base, steps=steps, span=span)[torch.as_tensor(rows)]  # (R, S, C, H, W)
    labels = [f"{names[0] if d in set(pose.tolist()) else names[1]} z{d} ({kl[d]:.2f})" for d in rows]
    cols = [f"{v:+.1f}" for v in np.linspace(-span, span, steps)]
    title = (
        f"traversals of image {base}: every {names[0]} dim, "
        f"the {len(top)} most active {names[1]} dims (KL in nats){note}"
    )
    written = [
        save_figure(plot_image_rows(imgs, labels, title=title, col_labels=cols), out_dir / "face_traversals.png")
    ]

    n = 6
    ia = rng.choice(len(prep.dataset), size=n, replace=False)
    ib = rng.choice(len(prep.dataset), size=n, replace=False)
    xa, xb = prep.dataset.images(ia), prep.dataset.images(ib)  # (n, C, H, W)
    model = prep.model
    with torch.no_grad():
        za, zb = model.encode(xa).mu, model.encode(xb).mu  # (n, M)
        z = swap_codes(za, zb, pose)  # (n, n, M): row i's pose, column j's everything else
        grid = _decode(model, z.reshape(n * n, -1)).view(n, n, *xa.shape[1:])  # (n, n, C, H, W)
    fig = plot_swap_grid(
        xa.cpu(),
        xb.cpu(),
        grid.cpu(),
        title=f"{names[0]} from the left column, {names[1]} (and the rest) from the top row{note}",
    )
    written.append(save_figure(fig, out_dir / "face_swap.png"))
    return written


def score_run(
    run_dir: str | os.PathLike, preset: str = "default", seed: int = 0, figures: bool = True, images: int | None = None
) -> dict:
    """Score one run on the procedural faces; write ``RUN/face_scores.json`` (and the figures).

    The run must have been trained on ``data.name=faces``. Gated runs are scored with their own
    partitions, un-gated ones with the paper's layout (6 + 18 dims) and with the best split.
    ``images`` overrides the preset's sample size. Returns the JSON-safe document written.
    """
    if preset not in SIZES:
        raise ConfigError(f"unknown preset '{preset}'; use default or fast")
    if images is not None and int(images) < 50:
        raise ConfigError(f"images: score at least 50 images, got {images}")
    run = Path(run_dir)
    t0 = time.perf_counter()
    config, prep, step = _prepare(run)
    from .evaluation import encode_posterior
    from .metrics import kl_per_dim

    rng = np.random.default_rng([int(seed), 8])
    ds = prep.dataset
    want = SIZES[preset] if images is None else int(images)
    idx = np.sort(rng.choice(len(ds), size=min(want, len(ds)), replace=False))  # (n,)
    mu, logvar = encode_posterior(prep, idx)  # (n, M) each
    factors = ds.factors_of(idx)  # (n, K)
    keep = [k for k in range(factors.shape[1]) if np.ptp(factors[:, k]) > 0]
    factor_names = [ds.factor_space.names[k] for k in keep]
    units, source = _units_of(config)
    scores = face_scores(
        mu, factors[:, keep], factor_names, units, rng, logvar=logvar, extra_splits=(source == "layout")
    )
    kl = np.asarray(kl_per_dim(mu, logvar))  # (M,)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "run": str(run),
        "checkpoint_step": int(step),
        "preset": preset,
        "seed": int(seed),
        "model": prep.model.describe(),
        "gated": source == "gated",
        "units_from": source,
        "images": int(idx.size),
        "kl_per_dim": kl,
        **scores,
    }
    if figures:
        note = "" if source == "gated" else "\n(un-gated: the paper's layout, dims 0-5 and 6-23)"
        paths = write_face_figures(prep, units, kl, run / "figures", np.random.default_rng([int(seed), 9]), note=note)
        doc["figures"] = [str(p.relative_to(run)) for p in paths]
    doc["seconds"] = time.perf_counter() - t0
    doc = _jsonable(doc)
    atomic_json(run / "face_scores.json", doc, indent=1)
    return doc


# --------------------------------------------------------------------------- many runs
_SEED_SUFFIX = re.compile(r"[-_](s|seed)\d+$")

#: The columns of the summary table: (label, key in the summary, where: main or best split).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("KL pose", "kl.pose"),
    ("KL expr", "kl.expression"),
    ("pose->pose share", "share.pose.pose"),
    ("expr->expr share", "share.expression.expression"),
    ("R2 pose|pose", "r2.pose.pose"),
    ("R2 pose|expr", "r2.pose.expression"),
    ("R2 expr|expr", "r2.expression.expression"),
    ("R2 expr|pose", "r2.expression.pose"),
    ("R2s pose|expr", "r2s.pose.expression"),
    ("R2s expr|expr", "r2s.expression.expression"),
    ("R2 id|expr", "r2.identity.expression"),
)


def _sweep_label(run: Path) -> str | None:
    """The label a sweep gave this run (``SWEEP/runs/<id>`` with ``SWEEP/manifest.json``), if any."""
    manifest = run.parent.parent / "manifest.json"
    if run.parent.name != "runs" or not manifest.is_file():
        return None
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        return next((r.get("label") for r in doc.get("runs", []) if r.get("id") == run.name), None)
    except (OSError, ValueError, AttributeError):
        return None


def _group_key(config_dict: dict) -> str:
    d = json.loads(json.dumps(config_dict))
    d["train"].pop("seed", None)
    d["train"].pop("evaluate", None)
    return json.dumps(d, sort_keys=True)


def summarise(run_dirs: Sequence[str | os.PathLike]) -> list[dict]:
    """Mean and standard deviation over seeds of the headline scores of scored runs.

    Runs are grouped by their config without ``train.seed``; each group is labelled by its first
    run's sweep label (runs planned by ``gatedvae sweep``), else its directory name without a
    ``_s0`` / ``-seed0`` suffix. Un-gated groups get a second row
    for the best split. Returns rows ``{"label", "runs", "n", "split", "mean": {...}, "std": {...}}``.
    """
    from .train import load_run_config

    groups: dict[str, dict] = {}
    for r in run_dirs:
        run = Path(r)
        file = run / "face_scores.json"
        if not file.is_file():
            raise GatedVAEError(f"run {run} has no face_scores.json; score it first (gatedvae face-study {run})")
        doc = json.loads(file.read_text(encoding="utf-8"))
        key = _group_key(to_dict(load_run_config(run)))
        label = _sweep_label(run) or _SEED_SUFFIX.sub("", run.name)
        g = groups.setdefault(key, {"label": label, "runs": [], "main": [], "best": []})
        g["runs"].append(str(run))
        g["main"].append(doc["summary"])
        if "best_split" in doc:
            g["best"].append(doc["best_split"]["summary"])
    rows = []
    for g in groups.values():
        for split, items in (
            ("as trained" if not g["best"] else "dims 0-5 / 6-23", g["main"]),
            ("best 6-dim split", g["best"]),
        ):
            if not items:
                continue
            keys = sorted(set().union(*items))
            vals = {
                k: np.array([np.nan if it.get(k) is None else it[k] for it in items], dtype=np.float64) for k in keys
            }
            rows.append(
                {
                    "label": g["label"],
                    "runs": g["runs"],
                    "n": len(items),
                    "split": split,
                    "mean": {
                        k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in vals.items()
                    },
                    "std": {
                        k: float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else float("nan")
                        for k, v in vals.items()
                    },
                }
            )
    return rows


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]] = COLUMNS) -> str:
    """A Markdown table of :func:`summarise` rows: mean +- std over seeds."""
    head = ["run", "split", "seeds", *(c for c, _ in columns)]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * 3 + ["---:"] * len(columns)) + " |"]
    for row in rows:
        cells = [row["label"], row["split"], str(row["n"])]
        for _, key in columns:
            m, s = row["mean"].get(key, float("nan")), row["std"].get(key, float("nan"))
            if not math.isfinite(m):
                cells.append("-")
            elif math.isfinite(s):
                cells.append(f"{m:.2f} ± {s:.2f}")
            else:
                cells.append(f"{m:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
