"""The training step never makes the host wait for the device (issue 6, CUDA hygiene).

On CUDA a host synchronisation (``.item()``, ``bool(tensor)``, ``float(tensor)``, ``.cpu()``,
``.tolist()``, a data-dependent shape such as ``nonzero``, a blocking host-to-device copy)
stalls the CPU until every queued kernel has run, so the next step cannot be queued behind the
current one. There is no GPU here, so the CUDA code path is run on the CPU and every call that
would synchronise on CUDA is counted: the aten operators that read a device value back to the
host (seen by a ``TorchDispatchMode``) and the tensor methods that copy to host memory.

Three code paths in the library are CPU-only by construction and are switched to the branch a
CUDA device takes: the per-step NaN check (``loop.PER_STEP_CHECK_DEVICES``, deferred to log
and checkpoint steps on CUDA), the bit-unpacking of packed binary images (numpy on the CPU, a
lookup table elsewhere) and the sparse first layer of the MLP encoder (CPU only; turned off
with its ``sparse_binary`` switch). PyTorch's own ``F.one_hot`` range-checks its input with a
host read on the CPU only (not on CUDA when ``num_classes`` is given), so it is replaced by
what it computes there. Host-to-device copies cannot be observed on the CPU; the
last tests check that they go through pinned memory without blocking.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import grid_dataset, tiny_config
from gatedvae.config import Config, GatingConfig, PartitionConfig
from gatedvae.data.base import PackedBinaryStore, as_index_tensor, host_to_device
from gatedvae.models import MODELS
from gatedvae.models.base import GenerativeModel
from gatedvae.run import condition_vectors
from gatedvae.train import TrainingDiverged, latest_checkpoint, loop, train
from gatedvae.train.batch import Batcher

#: aten operators that read device memory back to the host (or need a data-dependent shape).
SYNC_OPS = {
    "_local_scalar_dense",
    "item",
    "is_nonzero",
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "equal",
    "allclose",
    "repeat_interleave",
}
#: tensor methods that copy to host memory.
HOST_METHODS = ("cpu", "tolist", "numpy", "__array__")

PARTS = tiny_config().gating.partitions  # position (x, y), scale, orientation
STEPS = 6  # steps 0..4 are plain steps; step 5 logs and checkpoints


class SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@pytest.fixture
def counter(monkeypatch):
    """Counts host synchronisations; ``counter.per_step`` lists them between consecutive steps."""
    c = SyncCounter()
    for name in HOST_METHODS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            c.calls[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    marks: list[int] = []
    draw = Batcher.draw

    def marked(self, *a, **k):
        marks.append(c.total)
        return draw(self, *a, **k)

    monkeypatch.setattr(Batcher, "draw", marked)
    c.per_step = lambda: np.diff(marks).tolist() if len(marks) > 1 else []
    return c


@pytest.fixture
def cuda_path(monkeypatch):
    """Take, on the CPU, the branches a CUDA device takes."""
    monkeypatch.setattr(loop, "PER_STEP_CHECK_DEVICES", ())

    def lut_gather(self, index, out=None):  # PackedBinaryStore.gather off the CPU
        images = self.unpack_lut(self.packed.index_select(0, as_index_tensor(index, self.device)))  # (B, 1, H, W)
        return images if out is None else out.copy_(images)

    monkeypatch.setattr(PackedBinaryStore, "gather", lut_gather)
    prepare = loop.prepare

    def dense_prepare(*a, **k):
        prep = prepare(*a, **k)
        for m in prep.model.modules():
            if hasattr(m, "sparse_binary"):
                m.sparse_binary = False  # the sparse first layer is CPU-only
        return prep

    monkeypatch.setattr(loop, "prepare", dense_prepare)
    one_hot = torch.nn.functional.one_hot

    def cuda_one_hot(t, num_classes=-1):  # aten/src/ATen/native/Onehot.cpp: the range checks are CPU-only
        if num_classes < 1:
            return one_hot(t, num_classes)
        return torch.zeros(*t.shape, num_classes, dtype=t.dtype, device=t.device).scatter_(-1, t.unsqueeze(-1), 1)

    monkeypatch.setattr(torch.nn.functional, "one_hot", cuda_one_hot)


def config(
    model: str = "beta_vae", gating: GatingConfig | None = None, steps: int = STEPS, model_kw: dict | None = None, **kw
) -> Config:
    """The tiny config on 200 ellipses, a 16-wide MLP, batches of 8, ungated unless ``gating`` says."""
    return tiny_config(
        data={"size": 200},
        model={"name": model, "hidden": 16, **(model_kw or {})},
        gating=gating or GatingConfig(),
        train={"steps": steps, "batch_size": 8, "log_every": steps, "checkpoint_every": steps, "threads": 1, **kw},
    )


def gated(**kw) -> GatingConfig:
    return GatingConfig(enabled=True, partitions=PARTS, **kw)


def run_and_count(counter: SyncCounter, cfg: Config, tmp_path, dataset=None) -> list[int]:
    """Synchronisations of each step but the last (which has no next step to mark its end)."""
    with counter:
        train(cfg, tmp_path / "run", quiet=True, tensorboard=False, dataset=dataset)
    per_step = counter.per_step()
    assert len(per_step) == cfg.train.steps + cfg.train.finetune_steps - 1
    return per_step


def plain(per_step: list[int], cfg: Config) -> list[int]:
    """The counts of the steps that neither log nor checkpoint."""
    t = cfg.train
    return [n for i, n in enumerate(per_step) if (i + 1) % t.log_every and (i + 1) % t.checkpoint_every]


UNGATED = sorted(MODELS)
CASES = {
    "gated-cyclic": dict(gating=gated()),
    "gated-random": dict(gating=gated(schedule="random")),
    "gated-kl": dict(gating=gated(gate_kl=True)),
    "dcign-clamp": dict(gating=gated(mode="clamp")),
    "cluster+identity": dict(
        gating=GatingConfig(
            enabled=True,
            partitions=(
                PartitionConfig(name="pos", size=2, factors=("x", "y"), sampler="cluster", clusters=10, noise=0.2),
                PartitionConfig(name="free", size=2, sampler="identity"),
            ),
        )
    ),
    "finetune": dict(gating=gated(), finetune_steps=3),
    "cvae-condition": dict(model="cvae", model_kw={"condition": ("scale",)}),
    "conv64": dict(gating=gated(), model_kw={"net": "conv64"}),
}


@pytest.mark.parametrize("name", UNGATED)
def test_no_host_sync_in_a_training_step_of_any_model(name, tmp_path, counter, cuda_path):
    cfg = config(name)
    per_step = run_and_count(counter, cfg, tmp_path)
    assert plain(per_step, cfg) == [0] * len(plain(per_step, cfg)), dict(counter.calls)


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_host_sync_with_gating_clamping_finetuning_conditions(case, tmp_path, counter, cuda_path):
    cfg = config(**CASES[case])
    per_step = run_and_count(counter, cfg, tmp_path)
    assert plain(per_step, cfg) == [0] * len(plain(per_step, cfg)), dict(counter.calls)


def test_no_host_sync_with_packed_binary_images(tmp_path, counter, cuda_path):
    ds = grid_dataset(sizes=(3, 4, 5, 6), names=["shape", "scale", "x", "y"])  # 8x8 binary, bit-packed
    parts = (
        PartitionConfig(name="shape", size=2, factors=("shape",)),
        PartitionConfig(name="pos", size=2, factors=("x", "y")),
    )
    cfg = config(gating=GatingConfig(enabled=True, partitions=parts))
    per_step = run_and_count(counter, cfg, tmp_path, dataset=ds)
    assert plain(per_step, cfg) == [0] * len(plain(per_step, cfg)), dict(counter.calls)


def test_no_host_sync_with_the_gaussian_likelihood(tmp_path, counter, cuda_path):
    cfg = config(gating=gated(), model_kw={"likelihood": "gaussian"})
    per_step = run_and_count(counter, cfg, tmp_path)
    assert plain(per_step, cfg) == [0] * len(plain(per_step, cfg)), dict(counter.calls)


def test_the_counter_sees_the_per_step_nan_check_of_the_cpu(tmp_path, counter, cuda_path, monkeypatch):
    """The positive control: the CPU's per-step NaN check reads one value back every step."""
    monkeypatch.setattr(loop, "PER_STEP_CHECK_DEVICES", ("cpu",))
    per_step = run_and_count(counter, config(gating=gated()), tmp_path)
    assert per_step == [1] * len(per_step), dict(counter.calls)
    assert counter.calls["_local_scalar_dense"] >= STEPS


def test_the_log_and_checkpoint_steps_are_where_the_cuda_path_synchronises(tmp_path, counter, cuda_path):
    cfg = config(gating=gated(), steps=9, log_every=3, checkpoint_every=9)
    per_step = run_and_count(counter, cfg, tmp_path)
    # Steps 2 and 5 log (mean terms and the deferred NaN record read back), step 8 also checkpoints.
    assert [i for i, n in enumerate(per_step) if n] == [2, 5], per_step
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


# ----------------------------------------------------------------------------- the deferred NaN check
@pytest.fixture
def poisoned_kl(monkeypatch):
    original = GenerativeModel.regulariser

    def poisoned(self, post, z, step, generator):
        terms = original(self, post, z, step, generator)
        if step == 23:
            terms["kl"] = terms["kl"] * float("nan")
        return terms

    monkeypatch.setattr(GenerativeModel, "regulariser", poisoned)


@pytest.mark.parametrize(
    "log_every,checkpoint_every,found_at",
    [(5, 10, "the log step 25"), (7, 5, "the checkpoint step 25, which is not written")],
)
def test_deferred_nan_check_names_the_first_bad_step_and_keeps_the_last_good_checkpoint(
    tmp_path, cuda_path, poisoned_kl, log_every, checkpoint_every, found_at
):
    cfg = config(gating=gated(), steps=40, log_every=log_every, checkpoint_every=checkpoint_every, keep_checkpoints=5)
    run = tmp_path / "nan"
    with pytest.raises(
        TrainingDiverged, match=r"loss term 'kl' is nan at step 23; the last good checkpoint \(step 20\)"
    ) as exc:
        train(cfg, run, quiet=True, tensorboard=False)
    assert "\n" not in str(exc.value)
    assert latest_checkpoint(run / "checkpoints")[0] == 20, found_at
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "step 23" in status["error"]
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) <= 21  # nothing logged from the bad step on


# ----------------------------------------------------------------------------- host-to-device copies
def test_host_to_device_copies_go_through_pinned_memory_without_blocking(monkeypatch):
    """There is no CUDA here: record what would be called for a CUDA device."""
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: calls.append(("pin",)) or self)
    to = torch.Tensor.to

    def recording_to(self, *a, **k):
        calls.append(("to", str(a[0]) if a else None, k.get("non_blocking", False)))
        return self if a and str(a[0]).startswith("cuda") else to(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    cuda = torch.device("cuda", 0)
    out = as_index_tensor(np.arange(5), cuda)
    assert calls == [("pin",), ("to", "cuda:0", True)] and out.dtype == torch.int64
    calls.clear()
    host_to_device(torch.zeros(3, 2), cuda)
    assert calls == [("pin",), ("to", "cuda:0", True)]
    calls.clear()
    host_to_device(torch.zeros(3), torch.device("cpu"))  # CPU to CPU: no pinning, no copy
    assert ("pin",) not in calls
    # The trainer's other per-step copy (condition vectors) goes through the same helper.
    import inspect

    assert "host_to_device(" in inspect.getsource(condition_vectors)
