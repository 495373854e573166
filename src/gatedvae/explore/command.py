"""``gatedvae explore RUN``: the command's options and its body (wired into :mod:`gatedvae.cli`)."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import ConfigError
from .defaults import DEFAULT_EXPORT_IMAGES, DEFAULT_MAX_UPLOAD, DEFAULT_PORT

__all__ = ["add_arguments", "explore_command", "DESCRIPTION"]

DESCRIPTION = (
    "Open a trained run (any model, VAE or GAN) in the browser: pick inputs (random, by factor values, or "
    "an uploaded image, converted as gatedvae encode converts it), move latent sliders grouped by partition "
    "and see the decoded image at once, reset or sample a partition from the prior, swap partitions between "
    "two images, traversal strips with their range in posterior standard deviations, and next to the sliders "
    "the Hinton diagram and partition scores of the run's metrics.json (gatedvae evaluate). A conditional "
    "VAE's decoder labels are chosen per input (the input's own to start with). It listens on "
    "127.0.0.1 only unless --allow-remote; it writes nothing to disk. --export DIR writes a self-contained "
    "static page instead (docs/explore.md)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="a run directory written by gatedvae train")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0: any free port)"
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host that is not loopback (the explorer has no authentication; a warning is printed)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD / (1024 * 1024),
        help=f"largest image file accepted for upload, in MB (default {DEFAULT_MAX_UPLOAD // (1024 * 1024)})",
    )
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seeds the images behind the latent statistics and the export")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    p.add_argument(
        "--export",
        metavar="DIR",
        help="write DIR/index.html, a self-contained page (precomputed traversals and swaps, no server), and exit",
    )
    p.add_argument(
        "--export-images",
        type=int,
        default=DEFAULT_EXPORT_IMAGES,
        help=f"--export: inputs to precompute (default {DEFAULT_EXPORT_IMAGES}; swaps among all)",
    )


def explore_command(args: argparse.Namespace) -> int:
    from .export import export_page
    from .server import check_address, make_server
    from .session import Explorer

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.export is None:
        if args.export_images != DEFAULT_EXPORT_IMAGES:
            raise ConfigError("--export-images goes with --export DIR")
        check_address(args.host, args.port, args.allow_remote)  # before the run is loaded
    from ..run import device_option

    device = str(device_option(args.device))
    t0 = time.perf_counter()
    explorer = Explorer(args.run_dir, device=device, seed=args.seed)
    for note in explorer.notes:
        print(note if note.startswith("note:") else f"note: {note}", file=sys.stderr)
    if args.export is not None:
        path = export_page(explorer, args.export, n_images=args.export_images, seed=args.seed)
        size = path.stat().st_size / (1024 * 1024)
        print(f"wrote {path} ({size:.1f} MB, {args.export_images} inputs; open it in any browser, no server needed)")
        return 0
    server = make_server(
        explorer,
        args.host,
        args.port,
        allow_remote=args.allow_remote,
        max_upload=int(args.max_upload_mb * 1024 * 1024),
        verbose=args.verbose,
    )
    where = "this machine only" if server.loopback_only else "reachable from other machines"
    print(
        f"explore: {explorer.config.model.name} run {args.run_dir} (step {explorer.step:,}) at {server.url} "
        f"({where}; loaded in {time.perf_counter() - t0:.1f} s; Ctrl-C stops)",
        flush=True,
    )
    if args.open:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("explore: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
