"""Pair-batch sampling rate: index pairs/s and assembled image pairs/s, per sampler.

Run: .venv/bin/python benchmarks/bench_pairs.py [--json out.json] [--stride 1]

Uses procedural dSprites (the whole 737,280-image grid unless --stride thins the positions)
and a labelled (non-grid) view of it for the grouped sampler, all measured in one run.
Targets from the foundation issue: over 1,000,000 index pairs/s and over 50,000 assembled
image pairs/s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from gatedvae.config import DataConfig
from gatedvae.data import ClusterPairSampler, ExactPairSampler, FactorDataset, IdentityPairSampler, build_dataset


def rate(fn, items: int, min_seconds: float = 1.0) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    return n * items / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--stride", type=int, default=1, help="keep every k-th posX/posY class")
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    stride = {"posX": args.stride, "posY": args.stride} if args.stride > 1 else {}
    t0 = time.perf_counter()
    ds = build_dataset(DataConfig(name="dsprites", stride=stride))
    print(f"dSprites: {len(ds):,} images in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    grouped = FactorDataset("dsprites-grouped", ds.store, ds.factor_space, factors=ds.factors)
    rng = np.random.default_rng(0)
    B = args.batch
    samplers = {
        "exact grid (position)": ExactPairSampler(ds, ["posX", "posY"]),
        "exact grid (shape)": ExactPairSampler(ds, ["shape"]),
        "exact grouped (scale)": ExactPairSampler(grouped, ["scale"]),
        "exact grid + 10% noise": ExactPairSampler(ds, ["orientation"], noise=0.1),
        "identity": IdentityPairSampler(ds),
    }
    t0 = time.perf_counter()
    samplers["cluster (posX,posY; 1000)"] = ClusterPairSampler(ds, ["posX", "posY"], 1000, rng)
    cluster_setup = time.perf_counter() - t0
    rows = []
    for name, s in samplers.items():
        idx_b = rate(lambda: s.sample(B, rng), B)
        idx_big = rate(lambda: s.sample(65_536, rng), 65_536)

        def assemble():
            p = s.sample(B, rng)
            ds.images(p.input), ds.images(p.target)

        img = rate(assemble, B)
        rows.append({"sampler": name, "index_pairs_per_s_batch": idx_b, "index_pairs_per_s_65536": idx_big, "image_pairs_per_s": img})
    print(f"\n{'sampler':<28}{'index pairs/s (B=%d)' % B:>24}{'index pairs/s (B=65536)':>26}{'image pairs/s':>16}")
    for r in rows:
        print(f"{r['sampler']:<28}{r['index_pairs_per_s_batch']:>24,.0f}{r['index_pairs_per_s_65536']:>26,.0f}{r['image_pairs_per_s']:>16,.0f}")
    print(f"\ncluster sampler set-up (MiniBatchKMeans, 1000 clusters over {len(ds):,} rows): {cluster_setup:.1f} s")
    print("targets: > 1,000,000 index pairs/s, > 50,000 image pairs/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": B, "n_images": len(ds), "rows": rows, "cluster_setup_s": cluster_setup}, f, indent=2)


if __name__ == "__main__":
    main()
