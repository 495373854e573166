"""The memory-mapped image cache (issue 20): conversion once, streaming and atomic; reuse; a stale
or damaged cache converted again; and the process's anonymous memory bounded while converting from
a compressed source and while training from the cache.

Memory is measured in a fresh interpreter (``RssAnon`` and the peak RSS after ``clear_refs``), on
a 20,480-image source (252 MB of pixels) against bounds far below it. The full-size measurement
(an MPI3D-sized 12.7 GB cache, a conv64 training run on it) is ``-m slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gatedvae.data import cache as cache_mod
from gatedvae.data.cache import MemmapStore, NpzMember, materialise, open_cache, rss_anon_mb, write_cache
from gatedvae.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def chunks_of(images: np.ndarray, rows: int = 7):
    for s in range(0, len(images), rows):
        yield images[s : s + rows]


def test_write_and_reopen(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 3, 8, 8), dtype=np.uint8)
    meta = {"source": "x", "shape": [30, 3, 8, 8]}
    store = write_cache(tmp_path / "c.npy", (30, 3, 8, 8), chunks_of(images), meta)
    assert isinstance(store, MemmapStore) and len(store) == 30 and store.nbytes == images.nbytes
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), images)  # a plain .npy file
    idx = np.array([29, 0, 5, 5, 17])
    np.testing.assert_array_equal(store.gather_uint8(idx).numpy(), images[idx])
    np.testing.assert_allclose(store.gather(idx).numpy(), images[idx] / 255.0, rtol=1e-6)
    sub = store.subset(np.array([3, 1, 2])).subset(np.array([2, 0]))
    np.testing.assert_array_equal(sub.gather_uint8(np.arange(2)).numpy(), images[[2, 3]])
    np.testing.assert_array_equal(store.load().images.numpy(), images)
    again = open_cache(tmp_path / "c.npy", meta)
    assert again is not None and len(again) == 30
    store.drop_page_cache()  # best effort, must not fail
    np.testing.assert_array_equal(store.gather_uint8(idx).numpy(), images[idx])


def test_stale_damaged_and_interrupted_caches(tmp_path):
    images = np.arange(20 * 3 * 4 * 4, dtype=np.int64).astype(np.uint8).reshape(20, 3, 4, 4)
    meta = {"source": [{"file": "a", "bytes": 1}], "shape": [20, 3, 4, 4]}
    write_cache(tmp_path / "c.npy", (20, 3, 4, 4), chunks_of(images), meta)
    with pytest.warns(RuntimeWarning, match="another source or with other options"):
        assert open_cache(tmp_path / "c.npy", {**meta, "source": [{"file": "a", "bytes": 2}]}) is None
    (tmp_path / "c.npy.json").unlink()
    with pytest.warns(RuntimeWarning, match="interrupted conversion"):
        assert open_cache(tmp_path / "c.npy", meta) is None

    def dies():
        yield images[:8]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_cache(tmp_path / "d.npy", (20, 3, 4, 4), dies(), meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy"]  # nothing half-written left
    with pytest.raises(DataError, match="ended after 8 of 20 images"):
        write_cache(tmp_path / "d.npy", (20, 3, 4, 4), chunks_of(images[:8]), meta)
    with pytest.raises(DataError, match="does not fit uint8"):
        write_cache(tmp_path / "d.npy", (20, 3, 4, 4), chunks_of(images.astype(np.float32)), meta)
    assert not (tmp_path / "d.npy").exists()

    # the cache's data damaged (truncated) under a valid sidecar: converted again, with a warning
    calls = []

    def source():
        calls.append(1)
        return chunks_of(images)

    kw = dict(meta={"source": "s"}, data_dir_setting=str(tmp_path / "dd"), tag="t")
    first = materialise("x", "mmap", (20, 3, 4, 4), source, **kw)
    file = first.path
    assert file == tmp_path / "dd" / "cache" / "x-t-v1.npy" and len(calls) == 1
    materialise("x", "mmap", (20, 3, 4, 4), source, **kw)
    assert len(calls) == 1  # reused
    file.write_bytes(file.read_bytes()[:200])
    with pytest.warns(RuntimeWarning, match="converting again"):
        again = materialise("x", "mmap", (20, 3, 4, 4), source, **kw)
    assert len(calls) == 2
    np.testing.assert_array_equal(again.gather_uint8(np.arange(20)).numpy(), images)


def test_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(DataError) as exc:
        write_cache(tmp_path / "c.npy", (100, 3, 64, 64), iter(()), {})
    msg = str(exc.value)
    assert "\n" not in msg and "GB free" in msg and "data.data_dir" in msg
    assert list(tmp_path.iterdir()) == []


def write_big_npz(path: Path, n: int, compressed: bool) -> None:
    """An MPI3D-layout ``.npz`` (``images`` uint8 (n, 64, 64, 3)) written a chunk at a time."""
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method, compresslevel=1 if compressed else None) as zf:
        with zf.open("images.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (n, 64, 64, 3)})
            for s in range(0, n, 1024):
                m = min(1024, n - s)
                block = np.empty((m, 64, 64, 3), dtype=np.uint8)
                block[:] = ((np.arange(s, s + m) * 7) % 251).astype(np.uint8)[:, None, None, None]
                block[:, ::5, ::3, 1] = 255
                fh.write(block.tobytes())


def test_npz_member_streams(tmp_path):
    write_big_npz(tmp_path / "a.npz", 2500, compressed=True)
    m = NpzMember(tmp_path / "a.npz", "images", "hint")
    assert m.shape == (2500, 64, 64, 3) and m.dtype == np.uint8
    sizes = [len(c) for c in m.chunks(1000)]
    assert sizes == [1000, 1000, 500]


CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    import numpy as np
    from gatedvae.data import mpi3d as mod
    from gatedvae.data.cache import rss_anon_mb
    from gatedvae.data.factors import FactorSpace

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0

    # the peak of each phase: the sampler reads the phase before it measures, so a sample taken
    # during one phase never lands in the next one's peak (resetting one shared peak raced)
    phase, peaks = [0], [0.0, 0.0, 0.0]
    stop = threading.Event()
    def sample():
        while not stop.is_set():
            i = phase[0]
            peaks[i] = max(peaks[i], rss_anon_mb())
            time.sleep(0.002)

    path, data_dir, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    space = FactorSpace(mod.MPI3D_SPACE.names, (4, 4, 2, 2, 2, 10, 16))  # 20,480 images
    mod.MPI3D_SPACE = space
    t_start = time.perf_counter()
    out = {"base_anon": rss_anon_mb()}
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM)
    hwm0 = status("VmHWM")
    t = threading.Thread(target=sample, daemon=True); t.start()
    ds = mod.load_mpi3d(path, "toy", "mmap", data_dir)
    phase[0] = 1
    out["convert_peak_anon"] = peaks[0]
    out["convert_hwm_gain"] = status("VmHWM") - hwm0
    out["convert_anon_after"] = rss_anon_mb()
    out["convert_s"] = time.perf_counter() - t_start
    rng = np.random.default_rng(0)
    for s in range(0, len(ds), 128):  # every page of the cache touched, a batch of 128 at a time
        ds.images(np.arange(s, min(s + 128, len(ds))))
    for _ in range(50):
        ds.images(rng.integers(0, len(ds), 128))
    phase[0] = 2
    out["gather_peak_anon"] = peaks[1]
    out["rss_file_after"] = status("RssFile")
    if mode == "train":
        from gatedvae.config import Config, DataConfig, ModelConfig, TrainConfig
        from gatedvae.train import train
        cfg = Config(
            data=DataConfig(name="mpi3d", path=path, data_dir=data_dir),
            model=ModelConfig(name="beta_vae", net="conv64", latent_dim=10, hidden=64, beta=4.0),
            train=TrainConfig(steps=4, batch_size=32, seed=0, log_every=2, checkpoint_every=4,
                              image_every=1000, evaluate="none", threads=1),
        )
        t0 = time.perf_counter()
        train(cfg, data_dir + "/run", quiet=True, tensorboard=False)
        out["train_s"] = time.perf_counter() - t0
        out["train_peak_anon"] = peaks[2]
    stop.set()
    out["bytes"] = int(ds.store.nbytes)
    out["store"] = type(ds.store).__name__
    print(json.dumps(out))
    """
)


def run_child(source: Path, data_dir: Path, mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(data_dir), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists() or np.isnan(rss_anon_mb()), reason="needs Linux /proc")
def test_conversion_and_training_memory_are_bounded(tmp_path):
    """A 252 MB (pixels) compressed MPI3D-layout file: converting it raises the peak resident set by
    well under the data's size, gathering every image leaves the anonymous memory where it was
    (the pages are the page cache's), and a conv64 training run on it stays far under 2 GB."""
    source = tmp_path / "mpi3d_toy.npz"
    write_big_npz(source, 20480, compressed=True)
    res = run_child(source, tmp_path, "train")
    mb = res["bytes"] / 2**20
    assert res["store"] == "MemmapStore" and mb > 200
    assert res["convert_hwm_gain"] < 110, res  # a 16 MB chunk and its copies (measured 81 MB), not 252 MB
    assert res["convert_peak_anon"] - res["base_anon"] < 110, res
    assert res["gather_peak_anon"] - res["convert_anon_after"] < 60, res  # a batch's copies, not the pages
    assert res["rss_file_after"] > 0.8 * mb, res  # the pages were read: the page cache's, mapped
    assert res["train_peak_anon"] < 2048, res
    print(json.dumps(res))


@pytest.mark.slow
def test_full_size_mpi3d_cache_memory(tmp_path_factory):
    """An MPI3D-sized cache (1,036,800 images, 12.7 GB): build it, gather from it warm and cold, and
    train a conv64 beta-VAE on it for 50 steps, with RssAnon recorded (run with -m slow -s; needs
    13 GB of free disk; GATEDVAE_BIG_TMP picks the folder)."""
    base = Path(os.environ.get("GATEDVAE_BIG_TMP", tmp_path_factory.mktemp("big")))
    code = textwrap.dedent(
        """
        import json, sys, time, threading
        import numpy as np
        from gatedvae.data.cache import write_cache, rss_anon_mb, chunk_rows
        base = sys.argv[1]
        n = 1036800
        rows = chunk_rows(3 * 64 * 64)
        peak = [rss_anon_mb()]
        def chunks():
            for s in range(0, n, rows):
                m = min(rows, n - s)
                block = np.empty((m, 3, 64, 64), dtype=np.uint8)
                block[:] = (np.arange(s, s + m) % 251).astype(np.uint8)[:, None, None, None]
                peak[0] = max(peak[0], rss_anon_mb())
                yield block
        t0 = time.time()
        store = write_cache(base + "/mpi3d-toy-v1.npy", (n, 3, 64, 64), chunks(), {"synthetic": True})
        out = {"write_s": time.time() - t0, "write_peak_anon": peak[0]}
        rng = np.random.default_rng(0)
        for label in ("cold",):  # random rows of 12.7 GB: nearly every batch reads from the disk
            store.drop_page_cache()
            t0 = time.time(); k = 0
            while time.time() - t0 < 5:
                store.gather(rng.integers(0, n, 128)); k += 1
            out[label + "_img_per_s"] = k * 128 / (time.time() - t0)
        out["anon_after_gathers"] = rss_anon_mb()
        from gatedvae.config import Config, DataConfig, ModelConfig, TrainConfig
        from gatedvae.data import FactorDataset
        from gatedvae.data.mpi3d import MPI3D_SPACE
        from gatedvae.train import train
        ds = FactorDataset("mpi3d", store, MPI3D_SPACE)
        cfg = Config(
            data=DataConfig(name="mpi3d"),
            model=ModelConfig(name="beta_vae", net="conv64", latent_dim=10, hidden=256),
            train=TrainConfig(steps=50, batch_size=64, seed=0, log_every=25, checkpoint_every=50,
                              image_every=1000, evaluate="none", threads=1),
        )
        stop = threading.Event()
        peak[0] = rss_anon_mb()
        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_anon_mb()); time.sleep(0.005)
        th = threading.Thread(target=sample, daemon=True); th.start()
        t0 = time.time()
        train(cfg, base + "/run", quiet=True, tensorboard=False, dataset=ds)
        stop.set()
        out["train_s"] = time.time() - t0
        out["train_peak_anon"] = peak[0]
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code, str(base)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(res))
    assert res["write_peak_anon"] < 2048 and res["anon_after_gathers"] < 2048 and res["train_peak_anon"] < 2048


def test_bench_gather_rows():
    """``gatedvae bench``'s data section: images/s of the memory-mapped cache, warm and cold, against
    the in-memory store (quick sizes; the numbers themselves are not checked)."""
    from gatedvae.bench.options import BenchOptions
    from gatedvae.bench.sections import measure_gather

    res = measure_gather(BenchOptions.quick_mode(), log=lambda s: None)
    assert [r["store"].split(",")[0] for r in res["rows"]] == ["in memory (Uint8Store)", "memory-mapped cache"] * 1 + [
        "memory-mapped cache"
    ]
    assert all(r["images_per_s"] > 0 for r in res["rows"]) and res["rows"][0]["vs_memory"] == 1.0
    assert res["images"] == 4096 and res["batch"] == 16
