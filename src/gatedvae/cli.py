"""Command line: thin commands that parse, build a config and call one library function.

User errors (:class:`~gatedvae.errors.GatedVAEError`) print ``error: <one line>`` and exit 2;
no traceback is shown for them.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import __version__
from .config import DataConfig, apply_overrides
from .errors import ConfigError, GatedVAEError

__all__ = ["main", "build_parser"]


def _data_config(name: str, overrides: list[str]) -> DataConfig:
    # Accept both "stride.posX=4" and "data.stride.posX=4".
    cleaned = [o[len("data.") :] if o.startswith("data.") else o for o in overrides]
    return apply_overrides(DataConfig(), [f"name={name}", *cleaned])


class _DatasetNames:
    """The registered datasets' names (``%(datasets)s`` in a help text), looked up when the help is
    printed, so that building the parser does not import the registry (and torch)."""

    def __str__(self) -> str:
        from .data import DATASETS

        return ", ".join(DATASETS)


def cmd_data_describe(args: argparse.Namespace) -> int:
    from .data import build_dataset
    from .data.preview import describe_dataset

    cfg = _data_config(args.name, args.overrides)
    t0 = time.perf_counter()
    ds = build_dataset(cfg, progress=not args.quiet)
    took = time.perf_counter() - t0
    print(describe_dataset(ds))
    print(f"built in {took:.1f} s")
    return 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    from .data import build_dataset
    from .data.preview import preview

    cfg = _data_config(args.name, args.overrides)
    ks = _pair_ks(args.pairs) if args.pairs is not None else []  # a bad --pairs fails before the data is built
    ds = build_dataset(cfg, progress=not args.quiet)
    out = Path(args.out or f"{args.name}_preview.png")
    rng = np.random.default_rng(args.seed)
    from .data import KChangedPairSampler

    samplers = {f"k={k}": KChangedPairSampler(ds, k, where="--pairs") for k in ks}  # refused before writing
    path = preview(ds, out, rng)
    print(f"wrote {path}")
    if samplers:
        from .viz.pairs import pair_grid

        batches = {label: sampler.sample(8, rng) for label, sampler in samplers.items()}
        pairs_path = pair_grid(ds, batches, out.with_name(f"{out.stem}_pairs{out.suffix or '.png'}"))
        print(f"wrote {pairs_path} (Locatello et al. 2020's pairs: all factors shared but k; changed ones named)")
    return 0


def _pair_ks(text: str) -> list[int | str]:
    """``--pairs 1,3,random`` -> [1, 3, 'random'] (one-line error for anything else)."""
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "random":
            out.append(part)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise ConfigError(f"--pairs {text!r}: each value is a number of changed factors (1, 2, ...) or 'random'")
    return out


def cmd_data_download(args: argparse.Namespace) -> int:
    from .data.download import download

    folder = download(args.name, to=args.to, accept_licence=args.accept_licence, progress=not args.quiet)
    print(f"downloaded {args.name} into {folder}; its loader reads it there (or set data.path={folder})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .callbacks import standard_callbacks
    from .config import load_config
    from .train import distributed, train, train_ensemble

    callbacks = standard_callbacks()  # TensorBoard images; the train.evaluate evaluation at the end
    common = {"quiet": args.quiet, "tensorboard": not args.no_tensorboard, "callbacks": callbacks}
    if args.resume:
        if args.config or args.overrides:
            raise ConfigError(
                "--resume takes the config saved in the run directory; drop the config file and overrides"
            )
        if args.seeds:
            raise ConfigError("--seeds starts new runs; to continue an ensemble give its runs to --resume")
        if len(args.resume) > 1 or args.ensemble_strategy:
            if args.resume_on_other_device:
                raise ConfigError("--resume-on-other-device continues one run at a time; resume the runs one by one")
            summaries = train_ensemble(
                [None] * len(args.resume), args.resume, resume=True, strategy=args.ensemble_strategy or "auto", **common
            )
            return _report_members(args.resume, summaries)
        summary = train(
            None, args.resume[0], resume=True, other_device=args.resume_on_other_device, **common
        )  # fmt: skip
        run_dir = Path(args.resume[0])
    else:
        if not args.config:
            raise ConfigError("give a config file (see configs/) or --resume RUN_DIR")
        if args.resume_on_other_device:
            raise ConfigError("--resume-on-other-device continues a stopped run: use it with --resume RUN_DIR")
        config = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
        if args.seeds:
            seeds = parse_seeds(args.seeds)
            configs = [replace(config, train=replace(config.train, seed=s)) for s in seeds]
            dirs = [run_dir / f"seed-{s}" for s in seeds]
            summaries = train_ensemble(configs, dirs, strategy=args.ensemble_strategy or "auto", **common)
            return _report_members(dirs, summaries)
        if args.ensemble_strategy:
            raise ConfigError("--ensemble-strategy is for an ensemble: add --seeds, or resume several runs")
        summary = train(config, run_dir, **common)
    if summary.get("world_size", 1) > 1 and not distributed.is_main_process():
        return 0  # launched by torchrun: rank 0 reports
    final = summary.get("final", {})
    terms = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k not in ("step", "epoch", "phase"))
    print(f"{_finished_line(summary)}: {terms}")
    if "evaluation" in summary:
        print("evaluation (metrics.json): " + ", ".join(f"{k} {v:.3g}" for k, v in summary["evaluation"].items()))
    print(f"run directory: {run_dir}")
    return 0


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: comma-separated non-negative seeds and inclusive ranges, ``1,2,5-8``; each once."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError(f"--seeds {text}: '{part}' is not a seed or a range like 5-8; e.g. --seeds 0,1,2 or 0-4")
        first = int(m.group(1))
        seeds.extend(range(first, int(m.group(2) or first) + 1))
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"--seeds {text} names seed {dup[0]} twice; each member needs its own seed")
    return seeds


def _report_members(run_dirs, summaries: list[dict]) -> int:
    """One line per member of an ensemble; exit 3 when a member failed (the others finished)."""
    failed = 0
    for run_dir, summary in zip(run_dirs, summaries, strict=True):
        if summary.get("status") == "failed":
            failed += 1
            print(f"{run_dir}: failed: {summary.get('error')}")
            continue
        final = summary.get("final", {})
        terms = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k not in ("step", "epoch", "phase"))
        line = f"{run_dir}: {_finished_line(summary)}: {terms}"
        if "evaluation" in summary:
            line += "; evaluation: " + ", ".join(f"{k} {v:.3g}" for k, v in summary["evaluation"].items())
        print(line)
    if failed:
        print(f"{failed} of {len(summaries)} runs failed (their status.json says why); the others finished")
        return 3
    print(f"{len(summaries)} runs trained as one ensemble")
    return 0


def _finished_line(summary: dict) -> str:
    """What this session trained: ``finished 1500 steps in ...``, or for a resumed run
    ``finished steps 500-1,500 (1,000 this session) in ...``."""
    total, start = int(summary["steps"]), int(summary.get("resumed_from") or 0)
    speed = f"in {summary['seconds']:.0f} s ({summary['images_per_second']:.0f} images/s)"
    if start == 0:
        return f"finished {total} steps {speed}"
    if start >= total:
        return f"finished: all {total:,} steps were trained before this session, which closed the run"
    return f"finished steps {start:,}-{total:,} ({total - start:,} this session) {speed}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_run, format_headline

    doc = evaluate_run(
        args.run_dir,
        metrics=args.metrics,
        preset=args.preset,
        seed=args.seed,
        progress=not args.quiet,
        device=args.device,
    )
    print(format_headline(doc))
    print(f"wrote {Path(args.run_dir) / 'metrics.json'}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from .baselines import BASELINES, evaluate_baseline, format_baseline

    if args.name not in BASELINES:  # refuse before building the dataset
        from .io import closest

        close = closest(args.name, BASELINES)
        raise ConfigError(
            f"unknown baseline '{args.name}'"
            + (f"; did you mean '{close}'?" if close else "")
            + f" baselines: {', '.join(BASELINES)}"
        )
    for flag, value in (("--latent-dim", args.latent_dim), ("--fit-size", args.fit_size), ("--hidden", args.hidden)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    doc = evaluate_baseline(
        args.name,
        _data_config(args.dataset, args.overrides),
        metrics=args.metrics,
        preset=args.preset,
        seed=args.seed,
        latent_dim=args.latent_dim,
        fit_size=args.fit_size,
        model=args.model,
        net=args.net,
        hidden=args.hidden,
        bn_stats=not args.no_bn_stats,
        out_dir=args.out,
        progress=not args.quiet,
    )
    print(format_baseline(doc))
    if args.out:
        print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'baseline.json'}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from .scan import format_scan, run_scan

    attributes = [a.strip() for a in args.attributes.split(",") if a.strip()] if args.attributes else None
    doc = run_scan(
        args.run_dir,
        args.out,
        attributes=attributes,
        steps=args.steps,
        operator_steps=args.operator_steps,
        classifier_steps=args.classifier_steps,
        beta=args.beta,
        lam=args.lam,
        holdout=args.holdout,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(format_scan(doc))
    print(f"wrote {Path(args.out or Path(args.run_dir) / 'scan') / 'scan.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_command

    bench_command(args)
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from .explore.command import explore_command

    return explore_command(args)


def cmd_list_models(args: argparse.Namespace) -> int:
    from .models import MODELS

    width = max(len(n) for n in MODELS)
    for name in sorted(MODELS):
        entry = MODELS[name]
        hyper = ", ".join(f"{k}={v}" for k, v in sorted(entry.defaults.items())) or "-"
        print(f"{name:<{width}}  {hyper}")
        print(f"{'':<{width}}  {entry.description}")
    return 0


def cmd_list_datasets(args: argparse.Namespace) -> int:
    from .data import DATASETS

    for name, entry in DATASETS.items():
        options = ", ".join(f"options.{k}={o.default}" for k, o in entry.options.items())
        print(f"{name}: {entry.description}")
        print(f"  factors: {entry.factors}")
        print(f"  settings: {', '.join([*entry.uses, options] if options else entry.uses) or '-'}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from .encode import encode_to_file

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    info = encode_to_file(
        args.run_dir,
        args.images,
        args.out,
        partition=args.partition,
        batch_size=args.batch_size,
        device=args.device,
        drop_inactive=args.drop_inactive,
    )
    start, stop = info["dims"]
    kept = "" if len(info["kept"]) == stop - start else f"; kept the active dims {', '.join(map(str, info['kept']))}"
    print(
        f"wrote {info['out']}: {info['shape'][0]} x {info['shape'][1]} codes (partition {info['partition']}, "
        f"latent dims {start}..{stop - 1}{kept}, step {info['step']})"
    )
    for act in info["activity"].values():
        print("  " + act.describe())
    if info["warning"]:
        print(f"warning: {info['warning']}", file=sys.stderr)
    return 0


def cmd_face_study(args: argparse.Namespace) -> int:
    from .face_study import format_table, score_run, summarise

    for run in args.run_dirs:
        if args.force or not (Path(run) / "face_scores.json").is_file():
            doc = score_run(run, preset=args.preset, seed=args.seed, figures=not args.no_figures)
            if not args.quiet:
                print(f"scored {run} ({doc['seconds']:.0f} s)", file=sys.stderr)
    table = format_table(summarise(args.run_dirs))
    print(table)
    if args.table:
        Path(args.table).write_text(table + "\n", encoding="utf-8")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    if args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}")
    quickstart(Path(args.out), seed=args.seed, quiet=args.quiet, steps=args.steps)
    return 0


class _Parser(argparse.ArgumentParser):
    """A parser whose commands take options and positionals in any order: ``gatedvae train CFG
    --run-dir r data.path=faces/`` reads ``data.path=faces/`` as an override, as it would before
    ``--run-dir`` (argparse's intermixed parsing, on every command without sub-commands)."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._intermixing or any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gatedvae",
        description="Gated-VAE: disentangled VAEs with weak supervision; datasets, metrics, sweeps.",
    )
    parser.add_argument("--version", action="version", version=f"gatedvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    q = sub.add_parser(
        "quickstart",
        help="the demo: gated vs un-gated beta-VAE on dSprites in a few minutes",
        description="Build dSprites, show the Gated-VAE training pairs, train an un-gated and a gated beta-VAE "
        "on a short budget, evaluate both (DCI, MIG) and write figures.",
    )
    q.add_argument("--steps", type=int, default=3000, help="training steps per model (default 3000)")
    q.add_argument("--out", default="quickstart", help="output directory (default: ./quickstart)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_quickstart)

    t = sub.add_parser(
        "train",
        help="train a config (or resume a run)",
        description="Train the model a config describes, in a run directory; or resume a stopped run exactly. "
        "key=value overrides may come before or after the flags. One process trains a run at a time (RUN/.lock). "
        "Ctrl-C or SIGTERM stops after the current step with a checkpoint (exit 130 / 143; resume with --resume). "
        "Launched by torchrun (torchrun --nproc_per_node N -m gatedvae train ...) it trains data-parallel, "
        "train.batch_size being the global batch (docs/training.md).",
    )
    t.add_argument("config", nargs="?", help="YAML or JSON config (see configs/)")
    t.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. model.beta=4 train.steps=2000"
    )
    t.add_argument("--run-dir", help="where to write the run (default: runs/<config name>); must be new or empty")
    t.add_argument(
        "--resume",
        nargs="+",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint; several runs (checkpointed at the same step) "
        "continue as one ensemble",
    )
    t.add_argument(
        "--seeds",
        metavar="LIST",
        help="train the config once per seed, as one ensemble in one process: e.g. 0-4 or 1,2,7; the runs go to "
        "RUN_DIR/seed-N (docs/training.md, Ensembles)",
    )
    t.add_argument(
        "--ensemble-strategy",
        choices=("auto", "loop", "stacked"),
        help="how an ensemble's step is computed: loop (each run's own step, bitwise as trained alone), stacked "
        "(the runs' networks batched, one Adam: faster per image on GPUs and CPUs), auto (default: stacked where "
        "the models allow it, on CUDA and on a Linux (glibc) CPU; loop otherwise)",
    )
    t.add_argument(
        "--resume-on-other-device",
        action="store_true",
        help="with --resume: continue a run checkpointed on the CPU on a GPU or the other way round "
        "(not bitwise: the model's random draws are re-seeded; refused without this flag)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="score a trained run: metrics.json and figures in the run directory",
        description="Evaluate the latest checkpoint of a run: disentanglement metrics, partition scores and "
        "reconstruction into RUN_DIR/metrics.json, figures into RUN_DIR/figures/ (see docs/metrics.md). "
        "A run still in training (or stopped before its end) is evaluated at its latest checkpoint, with a note.",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by gatedvae train")
    e.add_argument("--metrics", help="comma-separated metrics or aliases, e.g. dci,mig,factor_vae (default: all)")
    e.add_argument(
        "--preset",
        default="default",
        choices=("default", "fast"),
        help="sample sizes: default (the reference papers') or fast (default: default)",
    )
    e.add_argument("--seed", type=int, default=0, help="random seed of the evaluation (default 0)")
    e.add_argument(
        "--device",
        default="auto",
        help="where the model encodes and decodes: auto (CUDA when available), cpu, cuda or cuda:N "
        "(default auto; any device, whatever the run was trained on)",
    )
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_evaluate)

    bl = sub.add_parser(
        "baseline",
        help="score a baseline representation (raw pixels, PCA, ICA, untrained VAE, ground truth)",
        description="Fit a baseline of the lecture's BetaVAE-metric table on a dataset with a seed and score it "
        "with the metrics of gatedvae evaluate (see docs/baselines.md). Baselines: raw_pixels, pca, ica, "
        "untrained_vae, ground_truth.",
    )
    bl.add_argument("name", help="raw_pixels, pca, ica, untrained_vae or ground_truth")
    bl.add_argument("dataset", help="a registered dataset: %(datasets)s").datasets = _DatasetNames()
    bl.add_argument("overrides", nargs="*", metavar="key=value", help="data settings, e.g. stride.posX=2 size=20000")
    bl.add_argument(
        "--latent-dim", type=int, default=10, help="PCA/ICA components, untrained model's latent size (default 10)"
    )
    bl.add_argument("--fit-size", type=int, default=10000, help="images PCA/ICA are fitted on (default 10000)")
    bl.add_argument("--model", default="vae", help="untrained_vae: the registered model (default vae)")
    bl.add_argument("--net", default="mlp", choices=("mlp", "conv64"), help="untrained_vae: the network (default mlp)")
    bl.add_argument("--hidden", type=int, default=256, help="untrained_vae: the hidden width (default 256)")
    bl.add_argument(
        "--no-bn-stats",
        action="store_true",
        help="untrained_vae: keep batch norm at its initial statistics (identity) instead of the fitting sample's",
    )
    bl.add_argument(
        "--metrics",
        help="comma-separated metrics or aliases (default: all; for raw_pixels pick, e.g. beta_vae,factor_vae)",
    )
    bl.add_argument("--preset", default="default", choices=("default", "fast"), help="sample sizes (default: default)")
    bl.add_argument("--seed", type=int, default=0, help="seeds the fit and the evaluation (default 0)")
    bl.add_argument("--out", help="directory for metrics.json and baseline.json (default: print only)")
    bl.add_argument("--quiet", action="store_true", help="no progress bars")
    bl.set_defaults(func=cmd_baseline)

    sc = sub.add_parser(
        "scan",
        help="SCAN on a trained VAE run: symbols grounded in its latent, sym2img, img2sym, operators",
        description="Train SCAN (Higgins et al. 2018) on top of a trained VAE run over k-hot symbols of the "
        "dataset's factor values, train its AND / IN COMMON / IGNORE operators, and score accuracy and diversity "
        "as in the lecture's table (docs/models.md). Writes scan.json, scan.safetensors and figures.",
    )
    sc.add_argument(
        "run_dir", metavar="RUN_DIR", help="a trained run of a VAE-family model on a full-grid dataset (dsprites)"
    )
    sc.add_argument("--out", help="output directory (default: RUN_DIR/scan)")
    sc.add_argument(
        "--attributes",
        help="factor or factor:bins, comma-separated (default for dSprites: shape,scale:3,posX:3,posY:3)",
    )
    sc.add_argument("--steps", type=int, default=5000, help="SCAN training steps (default 5000)")
    sc.add_argument(
        "--operator-steps", type=int, default=3000, help="recombination operator training steps (default 3000)"
    )
    sc.add_argument("--classifier-steps", type=int, default=1500, help="attribute reader training steps (default 1500)")
    sc.add_argument("--beta", type=float, default=1.0, help="SCAN's KL-to-prior weight (default 1)")
    sc.add_argument("--lambda", dest="lam", type=float, default=10.0, help="grounding KL weight (default 10)")
    sc.add_argument("--holdout", type=float, default=0.2, help="share of multi-word concepts held out (default 0.2)")
    sc.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sc.add_argument("--quiet", action="store_true", help="no progress bars")
    sc.set_defaults(func=cmd_scan)

    b = sub.add_parser(
        "bench",
        help="measure training speed against the matmul roofline, data, metrics and memory",
        description="Measure, in one run so that ratios hold: the fp32 matmul roofline, training images/s and "
        "GFLOP/s per network and model family, a per-item DataLoader baseline, dSprites generation, pair "
        "assembly, time per metric, and peak memory of a training run; print a table, write JSON (see "
        "docs/performance.md).",
    )
    from .bench import add_arguments as add_bench_arguments

    add_bench_arguments(b)
    b.set_defaults(func=cmd_bench)

    en = sub.add_parser(
        "encode",
        help="write a partition's codes (encoder means) of images to .npy or .csv",
        description="Encode images with a trained run and write the chosen partition's codes (posterior means): "
        "the embedding for downstream use. IMAGES is a folder of image files (sorted by name), an .npy/.npz array "
        "or one image file; images are converted to the run's colour mode and resized to its image size. "
        "A run still in training (or stopped before its end) is encoded at its latest checkpoint, with a note. "
        "Prints each partition's activity over the images (active dims: variance of the mean > 0.01; KL in nats "
        "per image) and warns when the partition asked for has collapsed (no dim carries 0.1 nats).",
    )
    en.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by gatedvae train")
    en.add_argument("images", metavar="IMAGES", help="folder of images, .npy/.npz array, or an image file")
    en.add_argument(
        "--partition", default="all", help="partition name, e.g. expression (default: all = the whole latent)"
    )
    en.add_argument(
        "--out",
        default="codes.npy",
        help="output file: .npy (float32 N x dims) or .csv (one row per image; default codes.npy)",
    )
    en.add_argument("--batch-size", type=int, default=256, help="images per encoder call (default 256)")
    en.add_argument(
        "--drop-inactive",
        action="store_true",
        help="keep only the partition's active dims (variance of the mean over these images > 0.01); "
        "the CSV's column names keep their dim numbers",
    )
    en.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    en.set_defaults(func=cmd_encode)

    fs = sub.add_parser(
        "face-study",
        help="score runs on the procedural faces: pose vs expression per partition, figures, a table",
        description="For each run trained on data.name=faces: encode a sample, measure how much of pose and expression "
        "each partition holds (DCI importance shares with partitions as units, and R^2 of each factor predicted from "
        "one partition alone), write RUN/face_scores.json and RUN/figures/face_*.png; then print mean +- std over "
        "seeds per configuration (docs/reproductions.md, Face study). Runs already scored are not scored again.",
    )
    fs.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories trained on data.name=faces")
    fs.add_argument(
        "--preset", default="default", choices=("default", "fast"), help="12,500 (default) or 5,000 (fast) images"
    )
    fs.add_argument("--seed", type=int, default=0, help="random seed of the scoring (default 0)")
    fs.add_argument("--force", action="store_true", help="score again runs that have face_scores.json")
    fs.add_argument("--no-figures", action="store_true", help="skip the traversal and swap figures")
    fs.add_argument("--table", help="also write the Markdown table to this file")
    fs.add_argument("--quiet", action="store_true", help="no progress messages")
    fs.set_defaults(func=cmd_face_study)

    from .explore.command import DESCRIPTION as EXPLORE_DESCRIPTION
    from .explore.command import add_arguments as add_explore_arguments

    ex = sub.add_parser(
        "explore",
        help="look inside a trained run in the browser: sliders, swaps, traversals",
        description=EXPLORE_DESCRIPTION,
    )
    add_explore_arguments(ex)
    ex.set_defaults(func=cmd_explore)

    ls = sub.add_parser("list", help="list registered things: models, datasets")
    lsub = ls.add_subparsers(dest="list_command", metavar="WHAT")
    lm = lsub.add_parser("models", help="the registered models with their default hyperparameters")
    lm.set_defaults(func=cmd_list_models)
    ld = lsub.add_parser("datasets", help="the registered datasets with their factors and settings")
    ld.set_defaults(func=cmd_list_datasets)
    ls.set_defaults(func=lambda a: _usage(ls))

    d = sub.add_parser("data", help="datasets: describe, preview, download")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    for action, func, helptext in (
        ("describe", cmd_data_describe, "print a dataset's size, memory and factors"),
        ("preview", cmd_data_preview, "write a PNG grid of samples and one traversal row per factor"),
    ):
        p = dsub.add_parser(action, help=helptext)
        p.add_argument("name", help="a registered dataset (gatedvae list datasets): dsprites, ellipses, faces, ...")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="data settings, e.g. stride.posX=4 path=dsprites.npz size=20000 (see docs/datasets.md)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if action == "preview":
            p.add_argument("--out", help="PNG path (default: NAME_preview.png)")
            p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
            p.add_argument(
                "--pairs",
                metavar="K[,K...]",
                help="also write OUT_pairs.png: 8 pairs sharing all factors but K (a number, or 'random': uniform "
                "in 1..K-1), per value, as pairs.kind=k_changed draws them (full-grid datasets; docs/pairs.md)",
            )
        p.set_defaults(func=func)
    dl = dsub.add_parser(
        "download",
        help="fetch a data set's official files (resumable, verified)",
        description="Fetch a data set's official files into DIR (default: <data_dir>/NAME, where its loader "
        "looks): a progress bar, resume of a partial download, verification (size, format, MD5 where known), "
        "an atomic rename, archives unpacked. Offline or refused: one line naming the URL to fetch by hand.",
    )
    dl.add_argument(
        "name",
        help="shapes3d, mpi3d (toy), mpi3d_realistic, mpi3d_real, smallnorb, cars3d, mnist, celeba, scream, dsprites",
    )
    dl.add_argument("--to", metavar="DIR", help="the folder to download into (default: <data_dir>/NAME)")
    dl.add_argument(
        "--accept-licence",
        action="store_true",
        help="accept the data set's licence terms (required for CelebA: non-commercial research use only)",
    )
    dl.add_argument("--quiet", action="store_true", help="no progress bars")
    dl.set_defaults(func=cmd_data_download)
    d.set_defaults(func=lambda a: _usage(d))

    from .sweep.cli import add_commands as add_sweep_commands

    add_sweep_commands(sub)  # sweep plan|run|status|report, report
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The command line's warnings: ``warning: <message>`` on one line of stderr (no source line)."""
    print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        return _usage(parser)
    show, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        return int(args.func(args) or 0)
    except GatedVAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # A training stopped by SIGINT/SIGTERM wrote a checkpoint and says how to resume (130/143).
        print(str(exc) if hasattr(exc, "resume_command") else "interrupted", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))
    except OSError as exc:
        # A file we were asked to read or write: name it and stop, no traceback.
        target = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        why = " ".join(str(exc.strerror or exc).split())  # one line
        print(
            f"error: {why}{target}; check the path, its permissions and the free disk space, then run again",
            file=sys.stderr,
        )
        return 2
    finally:
        warnings.showwarning = show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
