"""The training step never makes the host wait for the device (issues 6 and 17, CUDA hygiene).

On CUDA a host synchronisation (``.item()``, ``bool(tensor)``, ``float(tensor)``, ``.cpu()``,
``.tolist()``, a data-dependent shape such as ``nonzero``, ``torch.linalg``'s error check, a
blocking host-to-device copy) stalls the CPU until every queued kernel has run, so the next step
cannot be queued behind the current one. The CUDA code path is run on the CPU and, between two
steps, every call that would synchronise on CUDA is counted: the aten operators that read a
device value back to the host (seen by a ``TorchDispatchMode``), the tensor methods that copy to
host memory, and every tensor made in host memory (seen by a ``TorchFunctionMode``: made from a
Python number, list or numpy array, or by a factory without ``device=``), which a CUDA step would
have to copy to the device. The one allowed kind is the data pipeline's: index and label arrays
handed to ``host_to_device`` (pinned memory, ``non_blocking=True``; the last test checks that).

Three code paths in the library are CPU-only by construction and are switched to the branch a
CUDA device takes: the per-step NaN check (``loop.PER_STEP_CHECK_DEVICES``, deferred to log
and checkpoint steps on CUDA), the bit-unpacking of packed binary images (numpy on the CPU, a
lookup table elsewhere) and the sparse first layer of the MLP encoder (CPU only; turned off
with its ``sparse_binary`` switch). PyTorch's own ``F.one_hot`` range-checks its input with a
host read on the CPU only (not on CUDA when ``num_classes`` is given), so it is replaced by
what it computes there.

What a count on the CPU cannot see (a wait inside an operator's CUDA kernel, a tensor kept in
host memory across steps and copied every step), the ``gpu``-marked test at the end sees: it
trains every model on a CUDA device with ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import sys
import weakref

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import grid_dataset, tiny_config
from gatedvae.config import Config, GatingConfig, PartitionConfig
from gatedvae.data import base
from gatedvae.data.base import PackedBinaryStore, as_index_tensor, host_to_device
from gatedvae.models import MODELS
from gatedvae.models.base import GenerativeModel
from gatedvae.run import condition_vectors
from gatedvae.train import TrainingDiverged, ensemble, latest_checkpoint, loop, train
from gatedvae.train.batch import Batcher

#: aten operators that read device memory back to the host (or need a data-dependent shape), and
#: the error check of ``torch.linalg`` (``cholesky``, ``inv``, ``solve``, ... read their ``info`` back
#: to raise; their ``*_ex`` forms leave it on the device).
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
    "_linalg_check_errors",
}
#: tensor methods that copy to host memory.
HOST_METHODS = ("cpu", "tolist", "numpy", "__array__")
#: torch functions that make a tensor from host data (Python numbers or lists, numpy arrays): on a
#: CUDA device, a copy from host memory that makes the host wait unless it goes through pinned memory.
#: (``torch.from_numpy`` too, which a function mode does not see: the fixture wraps it.)
HOST_DATA = (torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor)
#: factory functions: called without ``device=`` they allocate in host memory (the default device),
#: and a tensor made there for a CUDA step has to be copied over.
FACTORIES = (
    torch.empty,
    torch.empty_strided,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.arange,
    torch.linspace,
    torch.logspace,
    torch.eye,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.scalar_tensor,
    torch.tril_indices,
    torch.triu_indices,
)

PARTS = tiny_config().gating.partitions  # position (x, y), scale, orientation
STEPS = 6  # steps 0..4 are plain steps; step 5 logs and checkpoints


class _Dispatch(TorchDispatchMode):
    """Counts the aten operators of :data:`SYNC_OPS`."""

    def __init__(self, calls: collections.Counter) -> None:
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


class _HostData(TorchFunctionMode):
    """Counts the tensors made in host memory: from host data (:data:`HOST_DATA`) or by a factory
    without ``device=`` (:data:`FACTORIES`). Each is a host-to-device copy on a CUDA device, except
    those handed to ``host_to_device`` (pinned memory, ``non_blocking=True``), which are uncounted
    again there (:meth:`sent`)."""

    def __init__(self, calls: collections.Counter) -> None:
        super().__init__()
        self.calls = calls
        self.made: dict[int, tuple[weakref.ref, str]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = None
        if func in HOST_DATA:
            data = args[1] if func is torch.Tensor.new_tensor else (args[0] if args else kwargs.get("data"))
            if not isinstance(data, torch.Tensor):
                name = f"{func.__name__}(host data)"
        elif func in FACTORIES and kwargs.get("device") is None and kwargs.get("out") is None:
            name = f"{func.__name__}(no device)"
        if name is not None:
            self.note(out, name)
        return out

    def note(self, t: torch.Tensor, name: str) -> None:
        self.calls[name] += 1
        self.made[id(t)] = (weakref.ref(t), name)

    def sent(self, t: torch.Tensor) -> None:
        ref, name = self.made.pop(id(t), (None, ""))
        if ref is not None and ref() is t:
            self.calls[name] -= 1


class SyncCounter:
    """Counts host synchronisations and host-to-device copies (``with counter: ...``): the aten
    operators that read device memory (:class:`_Dispatch`), the tensor methods that copy to host
    memory (patched by the fixture) and the tensors made in host memory (:class:`_HostData`)."""

    def __init__(self) -> None:
        self.calls: collections.Counter = collections.Counter()
        self.host = _HostData(self.calls)
        self._modes = contextlib.ExitStack()

    def __enter__(self) -> SyncCounter:
        self._modes.enter_context(self.host)
        self._modes.enter_context(_Dispatch(self.calls))
        return self

    def __exit__(self, *exc: object) -> None:
        self._modes.close()

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@pytest.fixture
def counter(monkeypatch):
    """Counts host synchronisations; ``counter.per_step()`` lists their numbers between consecutive
    steps, ``counter.step_calls(i)`` what was counted between step i and the next."""
    c = SyncCounter()
    for name in HOST_METHODS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            c.calls[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    from_numpy = torch.from_numpy

    def noted_from_numpy(a):
        t = from_numpy(a)
        c.host.note(t, "from_numpy(host data)")
        return t

    monkeypatch.setattr(torch, "from_numpy", noted_from_numpy)

    def sending(t, device):  # the library's one pinned, non-blocking host-to-device copy
        c.host.sent(t)
        return host_to_device(t, device)

    for module in [m for name, m in sys.modules.items() if name.startswith("gatedvae")]:
        if getattr(module, "host_to_device", None) is host_to_device:
            monkeypatch.setattr(module, "host_to_device", sending)
    marks: list[collections.Counter] = []
    draw = Batcher.draw

    def marked(self, *a, **k):
        marks.append(collections.Counter(c.calls))
        return draw(self, *a, **k)

    monkeypatch.setattr(Batcher, "draw", marked)
    c.per_step = lambda: [sum(b.values()) - sum(a.values()) for a, b in zip(marks, marks[1:], strict=False)]
    c.step_calls = lambda i: {k: n for k in marks[i + 1] if (n := marks[i + 1][k] - marks[i][k])}
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
    """The tiny config on 200 ellipses, a 16-wide MLP, batches of 8, ungated unless ``gating`` says, on
    the CPU unless ``device`` says."""
    train = {"steps": steps, "batch_size": 8, "log_every": steps, "checkpoint_every": steps, "threads": 1}
    return tiny_config(
        data={"size": 200},
        model={"name": model, "hidden": 16, **(model_kw or {})},
        gating=gating or GatingConfig(),
        train={**train, "device": "cpu", **kw},
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


def assert_quiet(counter: SyncCounter, per_step: list[int], cfg: Config) -> None:
    """No plain step synchronised; otherwise name the first one and what it did."""
    t = cfg.train
    loud = [i for i, n in enumerate(per_step) if n and (i + 1) % t.log_every and (i + 1) % t.checkpoint_every]
    assert not loud, f"step {loud[0]} synchronised: {counter.step_calls(loud[0])} (steps: {per_step})"


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
    assert_quiet(counter, per_step, cfg)


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_host_sync_with_gating_clamping_finetuning_conditions(case, tmp_path, counter, cuda_path):
    cfg = config(**CASES[case])
    per_step = run_and_count(counter, cfg, tmp_path)
    assert_quiet(counter, per_step, cfg)


def test_no_host_sync_with_packed_binary_images(tmp_path, counter, cuda_path):
    ds = grid_dataset(sizes=(3, 4, 5, 6), names=["shape", "scale", "x", "y"])  # 8x8 binary, bit-packed
    parts = (
        PartitionConfig(name="shape", size=2, factors=("shape",)),
        PartitionConfig(name="pos", size=2, factors=("x", "y")),
    )
    cfg = config(gating=GatingConfig(enabled=True, partitions=parts))
    per_step = run_and_count(counter, cfg, tmp_path, dataset=ds)
    assert_quiet(counter, per_step, cfg)


def test_no_host_sync_with_the_gaussian_likelihood(tmp_path, counter, cuda_path):
    cfg = config(gating=gated(), model_kw={"likelihood": "gaussian"})
    per_step = run_and_count(counter, cfg, tmp_path)
    assert_quiet(counter, per_step, cfg)


def test_the_counter_sees_host_to_device_copies_and_linalg_error_checks(counter):
    """The positive control of the host-memory and linalg counts: what 0.2's gaussian likelihood,
    beta_tcvae_mss and chyvae did every step is counted; the same work done on the device is not."""
    x = torch.zeros(3)  # (3,) a tensor of the step, on "the device"
    spd = torch.eye(2, dtype=torch.float64, device=x.device)  # (2, 2)
    with counter:
        torch.as_tensor(1.0, dtype=x.dtype, device=x.device)  # 0.2's gaussian_nll: a float made a tensor
        torch.full((2, 2), 0.5, dtype=torch.float64).to(x.device)  # 0.2's MSS weights: built in host memory
        torch.arange(2)  # ... with host indices
        torch.linalg.cholesky(spd)  # 0.2's CHyVAE: the solver's status read back to raise
    assert dict(counter.calls) == {
        "as_tensor(host data)": 1,
        "full(no device)": 1,
        "arange(no device)": 1,
        "_linalg_check_errors": 1,
    }
    counter.calls.clear()
    with counter:
        torch.full((2, 2), 0.5, device=x.device).masked_fill(torch.eye(2, dtype=torch.bool, device=x.device), 1.0)
        x * 2.0 + torch.zeros_like(x)  # a Python number in an operator is an argument, not a copy
        torch.linalg.cholesky_ex(spd)  # the status stays on the device
        base.as_index_tensor(np.arange(3), x.device)  # the data pipeline's pinned, non-blocking copy
    assert counter.total == 0, dict(counter.calls)


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


# ----------------------------------------------------------------------------- on a CUDA device
GPU_CASES = {
    **{name: dict(model=name) for name in UNGATED},
    "gaussian": dict(gating=gated(), model_kw={"likelihood": "gaussian"}),
    "dcign-clamp": CASES["dcign-clamp"],
    "conv64": CASES["conv64"],
    "cvae-condition": CASES["cvae-condition"],
    "finetune": CASES["finetune"],
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", sorted(GPU_CASES))
def test_no_host_sync_between_log_steps_on_cuda(case, tmp_path, monkeypatch):
    """Every plain step on a real CUDA device runs under ``torch.cuda.set_sync_debug_mode("error")``:
    any host wait (a read-back, a blocking copy, a stream synchronisation) raises. The mode is on from
    the draw of a plain step to the draw of the next step, so it covers the whole iteration (batch,
    step, running sums), and off for the first step (it allocates the optimiser state and the pinned
    host blocks) and for the log and checkpoint steps, which read values back by design."""
    cfg = config(**GPU_CASES[case], device="cuda")
    t = cfg.train
    total = t.steps + t.finetune_steps
    draw, step_fn = Batcher.draw, ensemble.training_step
    strict_steps = []

    def strict_draw(self, step, *a, **k):
        done = step + 1  # the step count once this step is done: logged or checkpointed?
        plain = 0 < step and done % t.log_every and done % t.checkpoint_every and done < total
        torch.cuda.set_sync_debug_mode("error" if plain else "default")
        if plain:
            strict_steps.append(step)
        return _mode_off_on_error(draw, self, step, *a, **k)

    monkeypatch.setattr(Batcher, "draw", strict_draw)
    monkeypatch.setattr(ensemble, "training_step", lambda *a, **k: _mode_off_on_error(step_fn, *a, **k))
    try:
        train(cfg, tmp_path / "run", quiet=True, tensorboard=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    plain_steps = [s for s in range(1, total - 1) if (s + 1) % t.log_every and (s + 1) % t.checkpoint_every]
    assert strict_steps == plain_steps and len(plain_steps) >= 4, strict_steps
    assert torch.cuda.get_sync_debug_mode() == 0


def _mode_off_on_error(fn, *a, **k):
    """``fn(*a, **k)``; a failure turns the sync debug mode off before it propagates, so that the
    error names the first synchronising call, not one in the trainer's clean-up."""
    try:
        return fn(*a, **k)
    except BaseException:
        torch.cuda.set_sync_debug_mode("default")
        raise
