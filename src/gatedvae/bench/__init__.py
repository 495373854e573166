"""``gatedvae bench``: training speed against the machine's matrix-multiply roofline, input
pipelines, data, metrics and memory, all measured in one run so that ratios hold on a noisy
machine. The one implementation behind ``benchmarks/*.py`` and docs/performance.md.

Sections (``--only``, default all but ``quickstart``):

* ``train``: the fp32 matmul roofline (a large square product = the machine's peak, and
  exactly the products one training step of each network performs); training images/s and
  achieved GFLOP/s (FLOPs of the layers a real step calls, :func:`traced_gemms`) of ``mlp`` hidden 1200
  (the Gated-VAE paper's dSprites preset, ``000_fc03c6fb001bc541.txt`` IV-A2, with
  beta-VAE's width), ``mlp`` hidden 256 and ``conv64``, gated and un-gated, one row per model
  family; the same models fed by a conventional per-item ``torch.utils.data.DataLoader``
  (:class:`PerItemPairs`) as a baseline; variants of the step (Adam kernels, the dense
  first layer, one thread, channels-first); where the time of a step goes (phases, and
  operators by ``torch.profiler``).
* ``data``: procedural dSprites generation time, store size and resident memory (fresh
  subprocess).
* ``pairs``: pair-batch sampling and assembly rates per sampler.
* ``metrics``: seconds per metric of the ``default`` and ``fast`` presets on a trained model
  (:func:`gatedvae.evaluation.evaluate_model`).
* ``memory``: peak resident memory of a full dSprites training run (the paper preset, with
  checkpoints, TensorBoard images and the end-of-run evaluation) in a subprocess.
* ``quickstart``: ``gatedvae quickstart`` end to end in a subprocess (minutes; opt-in).

Other jobs may share the machine: every timing of the ``train`` section is taken in rounds
that alternate all items, ratios are computed within a round and the median over rounds is
reported, with the load average. ``--markdown`` prints the tables as Markdown (for
docs/performance.md); ``--from bench.json`` re-renders a saved result without measuring.

The package, by concern: :mod:`.flops` (a step as matrix products, the roofline's operands),
:mod:`.runner` (the measured step: the trainer's ``Batcher`` and ``training_step``, the per-item
DataLoader baseline), :mod:`.timing` (interleaved rounds, medians, profiles, peak memory),
:mod:`.options`, :mod:`.train_section` and :mod:`.sections` (what is measured), :mod:`.children`
(sections run in a fresh interpreter), :mod:`.report` (targets, text and Markdown tables) and
:mod:`.command` (the command line).
"""

from .children import run_child
from .command import add_arguments, bench_command, options_from_args
from .flops import (
    Gemm,
    Operands,
    conv64_gemms,
    counted_flops,
    gemm_products,
    linalg_step,
    matmul_step,
    mlp_gemms,
    network_gemms,
    step_flops,
    traced_gemms,
)
from .options import DEFAULT_SECTIONS, SECTIONS, BenchOptions
from .report import format_markdown, format_report, targets
from .runner import LATENT_DIM, PHASES, LoaderDraw, PerItemPairs, Spec, StepRunner, build_runner, make_config
from .sections import (
    machine_info,
    measure_data,
    measure_memory,
    measure_metrics,
    measure_pairs,
    measure_quickstart,
    metrics_config,
    run_bench,
)
from .timing import interleaved, loadavg, median, peak_rss_mb, profile_step, ratio
from .train_section import measure_train

__all__ = [
    "SECTIONS",
    "DEFAULT_SECTIONS",
    "LATENT_DIM",
    "PHASES",
    "Gemm",
    "mlp_gemms",
    "conv64_gemms",
    "network_gemms",
    "step_flops",
    "traced_gemms",
    "gemm_products",
    "Operands",
    "matmul_step",
    "linalg_step",
    "counted_flops",
    "Spec",
    "make_config",
    "StepRunner",
    "build_runner",
    "PerItemPairs",
    "LoaderDraw",
    "interleaved",
    "profile_step",
    "median",
    "ratio",
    "loadavg",
    "peak_rss_mb",
    "BenchOptions",
    "measure_train",
    "measure_data",
    "measure_pairs",
    "measure_metrics",
    "measure_memory",
    "measure_quickstart",
    "metrics_config",
    "run_child",
    "machine_info",
    "run_bench",
    "targets",
    "format_report",
    "format_markdown",
    "add_arguments",
    "options_from_args",
    "bench_command",
]
