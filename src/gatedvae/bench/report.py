"""The report of a ``gatedvae bench`` result: the performance targets with their measured values
(:func:`targets`), a plain-text table (:func:`format_report`) and the same as Markdown
(:func:`format_markdown`, from which docs/performance.md is regenerated). Works on the saved JSON
alone (``gatedvae bench --from bench.json``)."""

from __future__ import annotations

from typing import Any

from .ensemble_section import format_ensemble, format_ensemble_markdown
from .runner import PHASES

__all__ = ["targets", "format_report", "format_markdown"]


def _find(rows: list[dict], key: str) -> dict | None:
    return next((r for r in rows if r["key"] == key), None)


def _peaks(tr: dict) -> dict[str, dict]:
    """Precision -> the matmul peak measured at it (a result from before 0.3 has the fp32 one only)."""
    return tr.get("peaks") or {"fp32": tr["peak"]}


def _cell(value, fmt: str, width: int = 0) -> str:
    """``value`` formatted right-aligned in ``width``, ``-`` where it is missing."""
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def _show_precision(tr: dict) -> bool:
    """Whether the row tables need a precision column (anything but fp32 alone)."""
    return list(_peaks(tr)) != ["fp32"]


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance issue's targets with the measured value, where measured."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, unit: str, higher_better: bool, note: str = "") -> None:
        if value is None or value != value:
            return
        ok = value >= limit if higher_better else value < limit
        out.append(
            {
                "target": name,
                "value": value,
                "limit": limit,
                "unit": unit,
                "met": bool(ok),
                "bound": ">=" if higher_better else "<",
                "note": note,
            }
        )

    tr = res.get("train")
    if tr:
        paper = _find(tr["rows"], tr["paper_key"])
        if paper:
            add(
                f"{paper['label']} batch {tr['batch']} gated beta-VAE: fraction of the shape roofline",
                paper["fraction_of_roofline"],
                0.75,
                "",
                True,
                "dense-equivalent FLOPs; batch assembly and pair sampling included",
            )
            dense = next(
                (v for v in tr["variants"] if v["base_key"] == tr["paper_key"] and "dense first" in v["variant"]), None
            )
            if dense:
                add("  same, dense first layer", dense["fraction_of_roofline"], 0.75, "", True, "no sparsity exploited")
        small = _find(tr["rows"], tr["small_key"])
        if small and "non_matmul_fraction" in small:
            add(
                f"{small['label']} batch {tr['batch']} gated: non-matmul share of the step",
                small["non_matmul_fraction"],
                0.20,
                "",
                False,
                "1 - (the step's linear algebra alone) / (step)",
            )
        loaders = [r for r in tr["loaders"] if r["ours_key"] == tr["small_key"]]
        if loaders:
            best = min(loaders, key=lambda r: r["speedup_of_ours"])
            add(
                f"{small['label'] if small else 'mlp'} gated: speed-up over the per-item DataLoader",
                best["speedup_of_ours"],
                1.5,
                "x",
                True,
                f"against the faster baseline ({best['variant']})",
            )
    me = res.get("metrics")
    if me:
        for preset, limit in (("default", 60.0), ("fast", 10.0)):
            if preset in me["presets"]:
                n = len(me["presets"][preset]["metrics"])
                add(
                    f"metric suite, {preset} preset ({n} metrics)",
                    me["presets"][preset]["total_seconds"],
                    limit,
                    "s",
                    False,
                )
    da = res.get("data")
    if da:
        add(f"dSprites in memory ({da['images']:,} images): store", da["store_bytes"] / 1e6, 400.0, "MB", False)
        add(
            "  resident memory added by building it",
            da["rss_gain_mb"],
            400.0,
            "MB",
            False,
            "peak RSS after minus before",
        )
    mem = res.get("memory")
    if mem:
        add(
            f"peak RSS of a dSprites training run (mlp-{mem['hidden']}, evaluate={mem['evaluate']})",
            mem["peak_rss_mb"],
            2048.0,
            "MB",
            False,
        )
    qs = res.get("quickstart")
    if qs:
        add(f"gatedvae quickstart end to end ({qs['steps']} steps per model)", qs["process_seconds"], 300.0, "s", False)
    return out


def _fmt_value(t: dict) -> str:
    v, u = t["value"], t["unit"]
    if u == "":
        return f"{v:.0%}"
    if u == "x":
        return f"{v:.2f}x"
    return f"{v:,.1f} {u}"


def _fmt_limit(t: dict) -> str:
    u = t["unit"]
    lim = f"{t['limit']:.0%}" if u == "" else (f"{t['limit']:.1f}x" if u == "x" else f"{t['limit']:,.0f} {u}")
    return f"{t['bound']} {lim}"


def _header(res: dict) -> list[str]:
    m = res["machine"]
    o = res["options"]
    lines = [
        f"gatedvae bench, {res.get('started', '')}: {m['cpu_count']} CPUs ({m['processor']}), torch {m['torch']} "
        f"with {m['threads']} threads{' (quick mode)' if o.get('quick') else ''}; load average "
        f"{'/'.join(f'{x:.2f}' for x in res['loadavg_start'])} at start, "
        f"{'/'.join(f'{x:.2f}' for x in res['loadavg_end'])} at end; "
        f"{res['seconds']:.0f} s"
    ]
    if m.get("device", "cpu") != "cpu":
        lines.append(
            f"device {m['device']}: {m.get('device_name', '?')} (compute capability {m.get('capability', '?')}, "
            f"{m.get('device_memory_gb', 0):.0f} GB), CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}; the train and "
            "metrics sections ran there, data and pairs are the host's work"
        )
    tr = res.get("train")
    if tr:
        lines.append(
            f"train: medians over {o['rounds']} interleaved rounds of {o['seconds'] / o['rounds']:.2f} s per item "
            f"(1-min load per round: {', '.join(f'{x:.1f}' for x in tr['loadavg_per_round'])}); batch {tr['batch']}; "
            f"dSprites {tr['dataset_images']:,} images"
        )
    return lines


def format_report(res: dict[str, Any]) -> str:
    """The plain-text report: targets, then each measured section."""
    out = _header(res)
    if res.get("targets"):
        out.append("")
        w = max(len(t["target"]) for t in res["targets"]) + 2
        out.append(f"{'target':<{w}}{'measured':>12}{'target':>12}  met")
        for t in res["targets"]:
            out.append(f"{t['target']:<{w}}{_fmt_value(t):>12}{_fmt_limit(t):>12}  {'yes' if t['met'] else 'NO'}")
    tr = res.get("train")
    if tr:
        out.append("")
        for p, pk in _peaks(tr).items():
            out.append(f"roofline: {p} matmul {pk['square']}^3 peak {pk['gflops']:.1f} GFLOP/s")
        shapes_p = tr.get("shapes_precision", "fp32")
        out.append(f"  {'products of the paper-preset step':<36}{'GFLOP/s':>9}{'of peak':>9}   layers ({shapes_p})")
        for r in tr["shapes"]:
            out.append(
                f"  {r['product']:<36}{r['gflops']:>9.1f}{r['fraction_of_peak']:>9.0%}   {', '.join(r['layers'])}"
            )
        prec = _show_precision(tr)
        prec_col = f"{'prec':<6}" if prec else ""
        hdr = (
            f"\n{'net':<10}{'model':<18}{'gated':<7}{prec_col}{'images/s':>9}{'ms/step':>9}"
            f"{'GFLOP/step':>11}{'GFLOP/s':>9}{'roofline':>9}{'of roof':>8}{'of peak':>8}{'non-mm':>8}"
        )
        out.append(hdr)
        out.append("-" * (len(hdr) - 1))
        for r in tr["rows"]:
            out.append(
                f"{r['label']:<10}{r['model']:<18}{'yes' if r['gated'] else 'no':<7}"
                + (f"{r.get('precision', 'fp32'):<6}" if prec else "")
                + f"{r['images_per_s']:>9,.0f}{r['step_ms']:>9.1f}"
                f"{r['flops_per_step'] / 1e9:>11.3f}{r['gflops']:>9.1f}{r['roofline_gflops']:>9.1f}"
                f"{r['fraction_of_roofline']:>8.0%}{r['fraction_of_peak']:>8.0%}"
                + (f"{r['non_matmul_fraction']:>8.0%}" if "non_matmul_fraction" in r else f"{'':>8}")
            )
        out.append(
            "GFLOP/step: analytic dense Linear/Conv FLOPs (forward + backward); roofline = the same products alone; "
            "non-mm = 1 - the step's linear algebra alone / the step"
            + ("; each row against the products and the peak at its precision." if prec else ".")
        )
        for key, err in tr["errors"].items():
            out.append(f"  not measured: {key}: {err}")
        out.append("\nper-item DataLoader baseline (same model and step, batches from torch.utils.data.DataLoader):")
        for r in tr["loaders"]:
            out.append(f"  {r['key']:<70}{r['images_per_s']:>9,.0f} images/s   ours {r['speedup_of_ours']:.2f}x faster")
        out.append("\nvariants (step time relative to the default step, same rounds):")
        for r in tr["variants"]:
            out.append(f"  {r['key']:<70}{r['images_per_s']:>9,.0f} images/s {r['relative_step_time']:>7.2f}x time")
        for sp in tr["split"]:
            out.append(
                f"\nwhere the time goes ({sp['key']}, median of {sp['calls']} timed steps, {sp['step_ms']:.1f} ms):"
            )
            for p in PHASES:
                out.append(f"  {p:<10}{sp['median_ms'][p]:>9.2f} ms {sp['share'][p]:>6.0%}")
        for pr in tr["profiles"]:
            out.append(f"\noperators ({pr['key']}, torch.profiler, {pr['steps']} steps of {pr['step_ms']:.1f} ms):")
            out.append("  " + ", ".join(f"{k} {v:.0%}" for k, v in pr["categories_share"].items()))
            for op in pr["ops"]:
                out.append(
                    f"  {op['op']:<44}{op['self_ms_per_step']:>8.2f} ms/step {op['calls_per_step']:>6.1f} "
                    f"calls  {op['category']}"
                )
    da = res.get("data")
    if da:
        out.append(
            f"\ndata: dSprites {da['images']:,} images in {da['seconds']:.1f} s, store "
            f"{da['store_bytes'] / 1e6:.0f} MB; "
            f"peak RSS {da['baseline_rss_mb']:.0f} MB after imports -> {da['peak_rss_mb']:.0f} MB "
            f"(+{da['rss_gain_mb']:.0f} MB); "
            f"gather of 128 images {da['gather_128_ms']:.2f} ms"
        )
        ga = da.get("gather")
        if ga:
            out.append(
                f"  gather rate, batch {ga['batch']} of random rows, {ga['images']:,} RGB 64x64 images "
                f"({ga['cache_bytes'] / 1e6:.0f} MB cache; RssAnon +{ga['rss_anon_gain_mb']:.0f} MB while gathering):"
            )
            for r in ga["rows"]:
                out.append(f"    {r['store']:<52}{r['images_per_s']:>12,.0f} images/s {r['vs_memory']:>7.3f}x")
    pa = res.get("pairs")
    if pa:
        out.append(f"\npairs ({pa['images']:,} images, batch {pa['batch']}):")
        out.append(f"  {'sampler':<34}{'index pairs/s':>15}{'(65,536)':>14}{'image pairs/s':>15}{'(prealloc)':>12}")
        for r in pa["rows"]:
            out.append(
                f"  {r['sampler']:<34}{r['index_pairs_per_s']:>15,.0f}{r['index_pairs_per_s_65536']:>14,.0f}"
                f"{r['image_pairs_per_s']:>15,.0f}{r['image_pairs_per_s_preallocated']:>12,.0f}"
                + (f"   set-up {r['setup_seconds']:.1f} s" if r["setup_seconds"] else "")
            )
    me = res.get("metrics")
    if me:
        presets = list(me["presets"])
        out.append(
            f"\nmetrics on {me['model']} at step {me['step']} ({me['images']:,} images"
            + (f"; trained in {me['train_seconds']:.0f} s" if me.get("train_seconds") else "")
            + "):"
        )
        out.append(f"  {'metric':<24}" + "".join(f"{p + ' s':>12}" for p in presets))
        out.append(f"  {'codes sample':<24}" + "".join(f"{me['presets'][p]['codes_seconds']:>12.2f}" for p in presets))
        names = list(dict.fromkeys(n for p in presets for n in me["presets"][p]["metrics"]))
        for n in names:
            out.append(
                f"  {n:<24}"
                + "".join(
                    f"{me['presets'][p]['metrics'][n]['seconds']:>12.2f}"
                    if n in me["presets"][p]["metrics"]
                    else f"{'-':>12}"
                    for p in presets
                )
            )
        out.append(f"  {'total':<24}" + "".join(f"{me['presets'][p]['total_seconds']:>12.2f}" for p in presets))
        bp = me.get("by_precision") or {}
        if len(bp) > 1:
            keys = list(dict.fromkeys(k for e in bp.values() for k in e["headline"]))
            w = max(len(k) for k in [*keys, "train s"]) + 2
            out.append(f"\n  scores by training precision ({me['scores_preset']} preset; same seed and data):")
            out.append(f"  {'score':<{w}}" + "".join(f"{p:>10}" for p in bp))
            out.append(f"  {'train s':<{w}}" + "".join(_cell(e.get("train_seconds"), ".1f", 10) for e in bp.values()))
            for k in keys:
                out.append(f"  {k:<{w}}" + "".join(_cell(e["headline"].get(k), ".3f", 10) for e in bp.values()))
    mem = res.get("memory")
    if mem:
        out.append(
            f"\nmemory: dSprites training run, mlp-{mem['hidden']} gated, {mem['steps']} steps, "
            f"evaluate={mem['evaluate']}: "
            f"peak RSS {mem['peak_rss_mb']:.0f} MB, {mem['process_seconds']:.0f} s"
        )
    if res.get("ensemble"):
        out += format_ensemble(res["ensemble"])
    qs = res.get("quickstart")
    if qs:
        out.append(
            f"\nquickstart ({qs['steps']} steps per model): {qs['process_seconds']:.0f} s end to end, peak "
            f"RSS {qs['peak_rss_mb']:.0f} MB"
        )
    return "\n".join(out)


def format_markdown(res: dict[str, Any]) -> str:
    """The same results as Markdown tables (docs/performance.md is regenerated from this)."""
    out = ["> " + line for line in _header(res)]
    if res.get("targets"):
        out += ["", "| target | measured | target | met |", "| --- | ---: | ---: | --- |"]
        for t in res["targets"]:
            out.append(
                f"| {t['target'].strip()} | {_fmt_value(t)} | {_fmt_limit(t)} | {'yes' if t['met'] else '**no**'} |"
            )
    tr = res.get("train")
    if tr:
        prec = _show_precision(tr)
        peaks = "; ".join(f"{p} matmul {pk['square']}^3, {pk['gflops']:.1f} GFLOP/s" for p, pk in _peaks(tr).items())
        out += [
            "",
            f"Roofline: {peaks}.",
            "",
            "| net | model | gated | "
            + ("precision | " if prec else "")
            + "images/s | ms/step | GFLOP/step | GFLOP/s | roofline GFLOP/s | of roofline | of peak | non-matmul |",
            "| --- | --- | --- | " + ("--- | " if prec else "") + "---: | " * 7 + "---: |",
        ]
        for r in tr["rows"]:
            nm = f"{r['non_matmul_fraction']:.0%}" if "non_matmul_fraction" in r else ""
            out.append(
                f"| {r['label']} | {r['model']} | {'yes' if r['gated'] else 'no'} | "
                + (f"{r.get('precision', 'fp32')} | " if prec else "")
                + f"{r['images_per_s']:,.0f} "
                f"| {r['step_ms']:.1f} | "
                f"{r['flops_per_step'] / 1e9:.3f} | {r['gflops']:.1f} | {r['roofline_gflops']:.1f} | "
                f"{r['fraction_of_roofline']:.0%} | {r['fraction_of_peak']:.0%} | {nm} |"
            )
        out += ["", "| per-item DataLoader baseline | images/s | ours is faster by |", "| --- | ---: | ---: |"]
        for r in tr["loaders"]:
            out.append(f"| {r['key']} | {r['images_per_s']:,.0f} | {r['speedup_of_ours']:.2f}x |")
        out += ["", "| variant | images/s | step time vs default |", "| --- | ---: | ---: |"]
        for r in tr["variants"]:
            out.append(f"| {r['key']} | {r['images_per_s']:,.0f} | {r['relative_step_time']:.2f}x |")
        for sp in tr["split"]:
            out += [
                "",
                f"Phases of `{sp['key']}` (median of {sp['calls']} steps, {sp['step_ms']:.1f} ms): "
                + ", ".join(f"{p} {sp['median_ms'][p]:.2f} ms ({sp['share'][p]:.0%})" for p in PHASES)
                + ".",
            ]
        for pr in tr["profiles"]:
            out += [
                "",
                f"Operators of `{pr['key']}` (torch.profiler, {pr['steps']} steps of {pr['step_ms']:.1f} ms): "
                + ", ".join(f"{k} {v:.0%}" for k, v in pr["categories_share"].items())
                + ".",
                "",
                "| operator | ms/step | calls/step | category |",
                "| --- | ---: | ---: | --- |",
            ]
            for op in pr["ops"]:
                out.append(
                    f"| `{op['op']}` | {op['self_ms_per_step']:.2f} | {op['calls_per_step']:.1f} | {op['category']} |"
                )
    da = res.get("data")
    if da:
        out += [
            "",
            f"dSprites: {da['images']:,} images generated in {da['seconds']:.1f} s; store "
            f"{da['store_bytes'] / 1e6:.0f} MB; "
            f"peak RSS {da['baseline_rss_mb']:.0f} MB after imports, {da['peak_rss_mb']:.0f} MB after building "
            f"(+{da['rss_gain_mb']:.0f} MB); a batch of 128 gathered in {da['gather_128_ms']:.2f} ms.",
        ]
        ga = da.get("gather")
        if ga:
            out += [
                "",
                f"Gather rate, a batch of {ga['batch']} random rows of {ga['images']:,} RGB 64x64 images "
                f"({ga['cache_bytes'] / 1e6:.0f} MB cache):",
                "",
                "| store | images/s | vs in memory |",
                "| --- | ---: | ---: |",
            ]
            out += [f"| {r['store']} | {r['images_per_s']:,.0f} | {r['vs_memory']:.3f}x |" for r in ga["rows"]]
    pa = res.get("pairs")
    if pa:
        out += [
            "",
            f"| sampler (batch {pa['batch']}) | index pairs/s | index pairs/s (65,536) | image pairs/s | "
            "image pairs/s (preallocated) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in pa["rows"]:
            out.append(
                f"| {r['sampler']} | {r['index_pairs_per_s']:,.0f} | {r['index_pairs_per_s_65536']:,.0f} | "
                f"{r['image_pairs_per_s']:,.0f} | {r['image_pairs_per_s_preallocated']:,.0f} |"
            )
    me = res.get("metrics")
    if me:
        presets = list(me["presets"])
        out += [
            "",
            f"Metrics on {me['model']} at step {me['step']}:",
            "",
            "| metric | " + " | ".join(f"{p} (s)" for p in presets) + " |",
            "| --- |" + " ---: |" * len(presets),
        ]
        out.append("| codes sample | " + " | ".join(f"{me['presets'][p]['codes_seconds']:.2f}" for p in presets) + " |")
        names = list(dict.fromkeys(n for p in presets for n in me["presets"][p]["metrics"]))
        for n in names:
            out.append(
                f"| {n} | "
                + " | ".join(
                    f"{me['presets'][p]['metrics'][n]['seconds']:.2f}" if n in me["presets"][p]["metrics"] else "-"
                    for p in presets
                )
                + " |"
            )
        out.append(
            "| **total** | " + " | ".join(f"**{me['presets'][p]['total_seconds']:.1f}**" for p in presets) + " |"
        )
        bp = me.get("by_precision") or {}
        if len(bp) > 1:
            keys = list(dict.fromkeys(k for e in bp.values() for k in e["headline"]))
            out += [
                "",
                f"Scores by training precision ({me['scores_preset']} preset; same seed and data):",
                "",
                "| score | " + " | ".join(bp) + " |",
                "| --- |" + " ---: |" * len(bp),
                "| train s | " + " | ".join(_cell(e.get("train_seconds"), ".1f").strip() for e in bp.values()) + " |",
            ]
            for k in keys:
                out.append(
                    f"| {k} | " + " | ".join(_cell(e["headline"].get(k), ".3f").strip() for e in bp.values()) + " |"
                )
    mem = res.get("memory")
    if mem:
        out += [
            "",
            f"Training run (mlp-{mem['hidden']} gated, {mem['steps']} steps, checkpoints, TensorBoard images, "
            f"evaluate={mem['evaluate']}): peak RSS {mem['peak_rss_mb']:.0f} MB.",
        ]
    if res.get("ensemble"):
        out += format_ensemble_markdown(res["ensemble"])
    qs = res.get("quickstart")
    if qs:
        out += [
            "",
            f"`gatedvae quickstart` ({qs['steps']} steps per model): {qs['process_seconds']:.0f} s end to "
            f"end, peak RSS {qs['peak_rss_mb']:.0f} MB.",
        ]
    return "\n".join(out)
