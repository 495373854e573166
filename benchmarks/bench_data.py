"""Dataset build times and memory: procedural dSprites and CorrelatedEllipses.

    python benchmarks/bench_data.py [--json OUT] [--ellipses-size 200000] [--skip-ellipses]

Reports the full procedural dSprites generation (737,280 images, bit-packed) with the store's
bytes and the peak resident memory after it, then CorrelatedEllipses (CHyVAE,
``004_1dabe4d22771e1b6.txt``) at 200,000 images. Peak RSS is the process's high-water mark
(``resource.getrusage(...).ru_maxrss``), so the ellipses row includes everything before it;
the "rss gain" column is the growth of that mark over the stage. Times are wall clock of one
run on this machine; compare them as ratios, not against absolute thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing


def peak_rss_mb() -> float:
    """The process's peak resident set size in MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--ellipses-size", type=int, default=200_000)
    parser.add_argument("--skip-ellipses", action="store_true")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from gatedvae.data.dsprites import DSPRITES_SPACE, make_dsprites, render_dsprites, sprite_bank
    from gatedvae.data.ellipses import make_ellipses

    rows: list[dict] = []
    base_rss = peak_rss_mb()

    t0 = time.perf_counter()
    sprite_bank()
    bank_s = time.perf_counter() - t0
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    ds = make_dsprites()
    gen_s = time.perf_counter() - t0
    rss1 = peak_rss_mb()

    def row(stage: str, seconds: float, store_bytes: int = 0, rss: float | None = None, gain: float = 0.0) -> None:
        rss = peak_rss_mb() if rss is None else rss
        rows.append({"stage": stage, "seconds": seconds, "store_bytes": store_bytes, "peak_rss_mb": rss, "rss_gain_mb": gain})

    row("baseline: python + numpy + torch imported", 0.0, rss=base_rss)
    row("dsprites sprite bank (720 sprites, 4x4 supersampled)", bank_s, rss=rss0, gain=rss0 - base_rss)
    row(f"dsprites full grid ({len(ds):,} images, packed)", gen_s, ds.store.nbytes, rss=rss1, gain=rss1 - rss0)

    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ds), 65_536)
    t0 = time.perf_counter()
    render_dsprites(DSPRITES_SPACE.to_factors(idx))
    render_s = time.perf_counter() - t0
    row("render_dsprites 65,536 random images", render_s)
    t0 = time.perf_counter()
    for _ in range(100):
        ds.store.gather(torch.from_numpy(rng.integers(0, len(ds), 128)))
    gather_s = (time.perf_counter() - t0) / 100
    row("gather one batch of 128 (unpack to float32)", gather_s)
    del ds

    if not args.skip_ellipses:
        rss2 = peak_rss_mb()
        t0 = time.perf_counter()
        el = make_ellipses(size=args.ellipses_size)
        el_s = time.perf_counter() - t0
        rss3 = peak_rss_mb()
        row(f"ellipses ({len(el):,} images, uint8)", el_s, el.store.nbytes, rss=rss3, gain=rss3 - rss2)

    print(f"{'stage':<58} {'seconds':>9} {'store MB':>9} {'peak RSS MB':>12} {'rss gain MB':>12}")
    for r in rows:
        mb = r["store_bytes"] / 1e6
        print(f"{r['stage']:<58} {r['seconds']:>9.4f} {mb:>9.1f} {r['peak_rss_mb']:>12.0f} {r['rss_gain_mb']:>12.0f}")

    if args.json is not None:
        machine = {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
        }
        out = {"machine": machine, "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
