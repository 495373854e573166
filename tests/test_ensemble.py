"""Ensembles (gatedvae.train.train_ensemble): K runs trained together, each an ordinary run.

The loop strategy is bitwise each member trained alone; the members are ordinary runs (resume
alone, evaluate); a diverged member leaves and the others finish; an ensemble stopped at any step
resumes bitwise; what cannot train together is refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from gatedvae.checkpoint import read_header
from gatedvae.cli import main, parse_seeds
from gatedvae.config import save_config
from gatedvae.errors import ConfigError
from gatedvae.train import latest_checkpoint, train, train_ensemble
from gatedvae.train.device import cpu_heap, cpu_heap_available
from gatedvae.train.ensemble import ensemble_key


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run / "checkpoints")[1]))


def _same_run(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()


def _members() -> list:
    """Three members that differ in everything an ensemble lets differ: seed, beta, lr, gating."""
    return [
        tiny_config({"train.seed": 1, "model.beta": 4.0}),
        tiny_config({"train.seed": 2, "model.beta": 1.0, "train.lr": 3e-3}, gated=False),
        tiny_config({"train.seed": 3, "gating.gate_kl": True}),
    ]


def test_loop_members_are_bitwise_their_solo_runs(tmp_path):
    configs = _members()
    dirs = [tmp_path / f"m{k}" for k in range(3)]
    summaries = train_ensemble(configs, dirs, quiet=True, tensorboard=False, strategy="loop")
    for k, (config, d) in enumerate(zip(configs, dirs, strict=True)):
        solo = tmp_path / f"solo{k}"
        train(config, solo, quiet=True, tensorboard=False)
        _same_run(d, solo)
        assert summaries[k]["status"] == "finished" and summaries[k]["ensemble"]["index"] == k
        header = read_header(latest_checkpoint(d / "checkpoints")[1])
        assert header["ensemble"]["size"] == 3 and header["ensemble"]["strategy"] == "loop"
        assert json.loads((d / "status.json").read_text())["status"] == "finished"


def test_an_ensemble_stopped_resumes_bitwise_and_a_member_resumes_alone(tmp_path):
    configs = _members()[:2]
    whole = [tmp_path / f"whole{k}" for k in range(2)]
    train_ensemble(configs, whole, quiet=True, tensorboard=False, strategy="loop")
    parts = [tmp_path / f"part{k}" for k in range(2)]
    out = train_ensemble(configs, parts, quiet=True, tensorboard=False, strategy="loop", stop_after=15)
    assert [o["status"] for o in out] == ["stopped", "stopped"]
    # member 0 continues alone (an ordinary run), member 1 as an ensemble of one
    train(None, parts[0], resume=True, quiet=True, tensorboard=False)
    train_ensemble([None], parts[1:], resume=True, quiet=True, tensorboard=False, strategy="loop")
    for a, b in zip(whole, parts, strict=True):
        _same_run(a, b)


def test_a_diverged_member_leaves_and_the_others_finish(tmp_path):
    configs = _members()[:2]
    configs[1] = tiny_config({"train.seed": 2, "train.lr": 1e9})  # diverges within a few steps
    dirs = [tmp_path / "ok", tmp_path / "bad"]
    out = train_ensemble(configs, dirs, quiet=True, tensorboard=False, strategy="loop")
    assert out[0]["status"] == "finished" and out[1]["status"] == "failed"
    status = json.loads((dirs[1] / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("loss term")
    solo = tmp_path / "solo"
    train(configs[0], solo, quiet=True, tensorboard=False)
    _same_run(dirs[0], solo)  # the failure did not touch the other member


def test_what_cannot_train_together_is_refused_in_one_line(tmp_path):
    a = tiny_config()
    for change, named in (
        ({"model.hidden": 32}, "model.hidden"),
        ({"train.batch_size": 8}, "train.batch_size"),
        ({"data.size": 300}, "data.size"),
        ({"model.name": "beta_tcvae"}, "model.name"),
    ):
        b = tiny_config(change)
        assert ensemble_key(a) != ensemble_key(b)
        with pytest.raises(ConfigError, match=named) as exc:
            train_ensemble([a, b], [tmp_path / "a", tmp_path / "b"], quiet=True, tensorboard=False)
        assert "\n" not in str(exc.value)
        assert not (tmp_path / "a").exists()  # nothing written
    assert ensemble_key(a) == ensemble_key(tiny_config({"model.beta": 9.0, "train.seed": 5, "train.lr": 0.1}))
    with pytest.raises(ConfigError, match="given twice"):
        train_ensemble([a, a], [tmp_path / "x", tmp_path / "x"], quiet=True, tensorboard=False)
    with pytest.raises(ConfigError, match="stacked ensemble step cannot train these runs: DC-IGN"):
        clamp = tiny_config({"gating.mode": "clamp"})
        train_ensemble([clamp, clamp], [tmp_path / "c0", tmp_path / "c1"], strategy="stacked")


def test_runs_at_different_steps_do_not_resume_together(tmp_path):
    configs = _members()[:2]
    dirs = [tmp_path / "a", tmp_path / "b"]
    train(configs[0], dirs[0], quiet=True, tensorboard=False, stop_after=10)
    train(configs[1], dirs[1], quiet=True, tensorboard=False, stop_after=20)
    with pytest.raises(ConfigError, match=r"different steps \(.*a at step 10, .*b at step 20\)"):
        train_ensemble([None, None], dirs, resume=True, quiet=True, tensorboard=False)


def test_parse_seeds():
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    assert parse_seeds("5") == [5]
    for bad, why in (("1,1", "twice"), ("3-1", "range"), ("a", "range"), ("-2", "range")):
        with pytest.raises(ConfigError, match=why):
            parse_seeds(bad)


def test_cli_trains_seeds_as_one_ensemble_and_resumes_them(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    save_config(tiny_config(), cfg)
    out = tmp_path / "runs"
    args = ["--seeds", "0-1", "--run-dir", str(out), "--quiet", "--no-tensorboard", "--ensemble-strategy", "loop"]
    rc = main(["train", str(cfg), *args])
    text = capsys.readouterr().out
    assert rc == 0 and "2 runs trained as one ensemble" in text
    for s in (0, 1):
        info = json.loads((out / f"seed-{s}" / "summary.json").read_text())["ensemble"]
        assert info["size"] == 2 and info["strategy"] == "loop"
    solo = tmp_path / "solo"
    train(tiny_config({"train.seed": 1}), solo, quiet=True, tensorboard=False)
    _same_run(out / "seed-1", solo)
    rc = main(["train", "--resume", str(out / "seed-0"), str(out / "seed-1"), "--quiet"])
    assert rc == 2 and "already finished" in capsys.readouterr().err


# --------------------------------------------------------------------------- the stacked step
def _totals(run: Path) -> np.ndarray:
    return np.array([json.loads(line)["total"] for line in (run / "metrics.jsonl").read_text().splitlines()])


def _drift(a: Path, b: Path) -> tuple[float, float]:
    """(first step, largest over the steps) relative difference of two runs' logged totals."""
    ta, tb = _totals(a), _totals(b)
    rel = np.abs(ta - tb) / np.abs(tb)
    return float(rel[0]), float(rel.max())


#: Every family the stacked step trains, each with a gated and an un-gated member.
STACKED_FAMILIES = {
    "beta_vae": {},
    "vae": {},
    "annealed_vae": {},
    "info_vae": {"model.info_alpha": 0.0},
    "dip_vae_i": {},
    "dip_vae_ii": {},
    "beta_tcvae": {},
    "beta_tcvae_mss": {},
    "factor_vae": {},
    "cvae": {"model.condition": ["scale"]},
}


@pytest.mark.parametrize("family", sorted(STACKED_FAMILIES))
def test_stacked_members_follow_their_solo_runs(family, tmp_path):
    """Each member's first-step loss equals its solo run's to 1e-6 (relative), its first five logged
    totals stay within 1e-5 and all 20 within 1e-3 (float reassociation in the batched products only;
    FactorVAE's adversarial term amplifies it: 3e-4 by step 20 with one thread, 2e-7 with two)."""
    change = {"train.log_every": 1, "train.steps": 20, "train.threads": 2, "model.name": family}
    change.update(STACKED_FAMILIES[family])
    configs = [tiny_config({**change, "train.seed": 1}), tiny_config({**change, "train.seed": 2}, gated=False)]
    dirs = [tmp_path / "g", tmp_path / "u"]
    out = train_ensemble(configs, dirs, quiet=True, tensorboard=False, strategy="stacked")
    assert [o["ensemble"]["strategy"] for o in out] == ["stacked", "stacked"]
    for config, d in zip(configs, dirs, strict=True):
        solo = tmp_path / f"solo-{d.name}"
        train(config, solo, quiet=True, tensorboard=False)
        ta, tb = _totals(d), _totals(solo)
        rel = np.abs(ta - tb) / np.abs(tb)
        assert rel[0] <= 1e-6 and rel[:5].max() <= 1e-5 and rel.max() <= 1e-3, rel


def test_stacked_drift_is_no_more_than_a_thread_count_change(tmp_path):
    """At a width where the thread count changes the float summation order (hidden 128), over 60
    steps the stacked member drifts from its solo run no more than the solo run does between one
    and two threads."""
    change = {"train.log_every": 1, "train.steps": 60, "model.hidden": 128, "train.threads": 2, "train.seed": 1}
    configs = [tiny_config(change), tiny_config({**change, "train.seed": 2, "model.beta": 1.0}, gated=False)]
    dirs = [tmp_path / "a", tmp_path / "b"]
    train_ensemble(configs, dirs, quiet=True, tensorboard=False, strategy="stacked")
    two, one = tmp_path / "two", tmp_path / "one"
    train(configs[0], two, quiet=True, tensorboard=False)
    train(tiny_config({**change, "train.threads": 1}), one, quiet=True, tensorboard=False)
    stacked, threads = _drift(dirs[0], two)[1], _drift(one, two)[1]
    assert threads > 0 and stacked <= threads, (stacked, threads)


def test_stacked_ensemble_resumes_bitwise_and_its_members_resume_alone(tmp_path):
    configs = _members()
    whole = [tmp_path / f"whole{k}" for k in range(3)]
    train_ensemble(configs, whole, quiet=True, tensorboard=False, strategy="stacked")
    parts = [tmp_path / f"part{k}" for k in range(3)]
    train_ensemble(configs, parts, quiet=True, tensorboard=False, strategy="stacked", stop_after=15)
    train_ensemble([None] * 3, parts, resume=True, quiet=True, tensorboard=False, strategy="stacked")
    for a, b in zip(whole, parts, strict=True):
        _same_run(a, b)
    # a member's checkpoint is an ordinary run's: it resumes alone (solo step from here on)
    alone = [tmp_path / f"alone{k}" for k in range(2)]
    train_ensemble(configs[:2], alone, quiet=True, tensorboard=False, strategy="stacked", stop_after=20)
    train(None, alone[0], resume=True, quiet=True, tensorboard=False)
    first, most = _drift(alone[0], whole[0])
    assert first == 0.0 and most <= 1e-5
    assert json.loads((alone[0] / "status.json").read_text())["status"] == "finished"


def test_stacked_diverged_member_leaves_and_the_others_keep_their_values(tmp_path):
    configs = _members()
    configs[1] = tiny_config({"train.seed": 2, "train.lr": 1e9})
    dirs = [tmp_path / f"m{k}" for k in range(3)]
    out = train_ensemble(configs, dirs, quiet=True, tensorboard=False, strategy="stacked")
    assert [o["status"] for o in out] == ["finished", "failed", "finished"]
    ref = [tmp_path / "r0", tmp_path / "r2"]
    train_ensemble([configs[0], configs[2]], ref, quiet=True, tensorboard=False, strategy="stacked")
    for a, b in zip((dirs[0], dirs[2]), ref, strict=True):
        assert _drift(a, b)[1] <= 1e-6


def test_train_threads_is_the_runs_setting_not_the_callers(tmp_path):
    before = torch.get_num_threads()
    train(tiny_config({"train.threads": 1, "train.steps": 2}), tmp_path / "r", quiet=True, tensorboard=False)
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------- the CPU heap and auto
def _maps(size: int) -> tuple[int, int]:
    """(the size of this process's brk heap, how many other mappings have at least ``size`` bytes),
    from /proc/self/maps."""
    heap, big = 0, 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if line.endswith("[heap]"):
            heap = hi - lo
        elif hi - lo >= size:
            big += 1
    return heap, big


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


needs_glibc_heap = pytest.mark.skipif(
    not cpu_heap_available(), reason="cpu_heap sets glibc's malloc (Linux with glibc, no MALLOC_*_ variable set)"
)


@needs_glibc_heap
def test_cpu_heap_serves_large_tensors_from_the_heap_and_gives_them_back():
    """Inside cpu_heap a 96 MB tensor comes from the brk heap (no new mapping), freed memory stays
    in the process; after the block the free memory is given back."""
    size = 96 << 20
    with cpu_heap() as on:
        assert on
        heap0, big0 = _maps(size)
        t = torch.empty(size // 4, dtype=torch.float32).fill_(1.0)
        heap1, big1 = _maps(size)
        assert heap1 - heap0 >= size // 2 and big1 == big0  # (the top of the heap may have been free before)
        del t
        with cpu_heap() as inner:  # nested: set once, left by the outer block
            assert inner
        u = torch.empty(size // 4, dtype=torch.float32).fill_(2.0)
        assert _maps(size)[1] == big1  # from the heap again
        del u
        kept = _rss()
    assert kept - _rss() >= size // 2  # malloc_trim gave the free memory back


def test_the_heap_setting_changes_no_result(tmp_path, monkeypatch):
    """A stacked ensemble trained with the heap set (the trainer's default on glibc) and without it
    is bitwise the same: the allocator decides where tensors live, not their values. Hidden 1024 on
    64 x 64 images: the stacked first and last weights, their gradients and moments are 33.5 MB
    each, over glibc's largest mapping threshold (32 MB): mapped afresh without the heap."""
    import gatedvae.train.device as dev

    over = {"model.hidden": 1024, "train.steps": 6, "train.checkpoint_every": 6, "train.log_every": 3}
    configs = [tiny_config({"train.seed": s, **over}) for s in (4, 5)]
    runs = {}
    for name in ("heap", "plain"):
        if name == "plain":
            monkeypatch.setattr(dev, "_glibc", lambda: None)
        runs[name] = [tmp_path / name / f"m{k}" for k in range(2)]
        train_ensemble(configs, runs[name], quiet=True, tensorboard=False, strategy="stacked")
    for a, b in zip(runs["heap"], runs["plain"], strict=True):
        _same_run(a, b)


def test_cpu_heap_leaves_an_allocator_the_user_set(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not cpu_heap_available()
    with cpu_heap() as on:
        assert on is False


def test_auto_stacks_on_the_cpu_where_the_heap_can_be_set(monkeypatch):
    import gatedvae.train.ensemble as ens

    configs = _members()
    cpu = torch.device("cpu")
    monkeypatch.setattr(ens, "cpu_heap_available", lambda: True)
    assert ens.choose_strategy("auto", configs, cpu) == "stacked"
    assert ens.choose_strategy("auto", configs[:1], cpu) == "loop"  # one run: its own step
    clamp = [tiny_config({"gating.mode": "clamp"}) for _ in range(2)]
    assert ens.choose_strategy("auto", clamp, cpu) == "loop"  # what stacking refuses falls back
    monkeypatch.setattr(ens, "cpu_heap_available", lambda: False)
    assert ens.choose_strategy("auto", configs, cpu) == "loop"


def test_batches_gathered_into_buffers_are_the_batches_drawn_alone():
    """``Batcher.draw(out=...)`` (the stacked step's buffers) draws the same pairs with the same
    generator and writes the same images; an identity pair's target is its input tensor."""
    from gatedvae.run import prepare
    from gatedvae.train.batch import Batcher

    for config in (tiny_config(), tiny_config(gated=False)):
        prep = prepare(config, device=torch.device("cpu"), progress=False)
        a, b = Batcher(prep), Batcher(prep)
        ra, rb = np.random.default_rng(5), np.random.default_rng(5)
        shape = (config.train.batch_size, *prep.dataset.image_shape)
        xs, ts = torch.full(shape, -1.0), torch.full(shape, -1.0)
        for step in range(3):
            want, got = a.draw(step, ra), b.draw(step, rb, out=(xs, ts))
            assert got.x is xs and torch.equal(got.x, want.x) and torch.equal(got.target, want.target)
            assert (got.target is got.x) == (want.target is want.x)
            if got.target is not got.x:
                assert got.target is ts
            assert got.active == want.active
