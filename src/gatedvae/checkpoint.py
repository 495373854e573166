"""Checkpoints: config + tensors in one safetensors file, written atomically, loaded without pickle.

A checkpoint holds every tensor the run needs to continue bitwise (model parameters and
buffers, optimiser moments, the torch generator's state) and a JSON header with the rest
(step, resolved config, the numpy generator's state, optimiser hyperparameters). It is
written to a temporary file, flushed to disk, and renamed into place, so a run killed at
any moment leaves either the previous checkpoint or the new one, never half a file.
Nothing is ever unpickled: safetensors stores raw tensors, JSON the rest.

Tensors are stored from host memory and always loaded into host memory first, then copied
into the model's and optimisers' tensors wherever those live: a checkpoint written on a GPU
loads on a CPU-only machine and the other way round. The header records the device the run
was on (``device``, from 0.3; :func:`checkpoint_device` reads it, or infers it for older files),
because the torch generator's state is not portable between the CPU and CUDA.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import GatedVAEError

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "checkpoint_device",
    "CheckpointError",
    "FORMAT",
]

FORMAT = "gatedvae-checkpoint-1"
_NAME = re.compile(r"^step-(\d{9})\.safetensors$")


class CheckpointError(GatedVAEError):
    """A checkpoint file is missing, truncated, foreign or unsafe."""


def _params_by_id(opt: torch.optim.Optimizer) -> dict[int, torch.Tensor]:
    """The optimiser's parameters under the integer ids its ``state_dict`` uses (in order)."""
    return dict(enumerate(p for group in opt.param_groups for p in group["params"]))


def _transposed(p: torch.Tensor | None, value: torch.Tensor) -> bool:
    """Whether ``value`` is a per-element state of a parameter stored as its transpose
    (``stored_transposed``, :class:`gatedvae.nets.mlp.BinaryInputLinear`): saved in the
    ``(out, in)`` form of ``nn.Linear`` so that checkpoints have one format."""
    return p is not None and getattr(p, "stored_transposed", False) and value.dim() == 2


def _optimizer_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    params = _params_by_id(opt)
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                if _transposed(params.get(pid), value) and value.shape == params[pid].shape:
                    value = value.t()  # (in, out) -> (out, in)
                tensors[f"{prefix}/state/{pid}/{key}"] = value.detach().cpu().clone().contiguous()
            else:
                meta_state.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": meta_state}


def _restore_optimizer(
    prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    pat = re.compile(rf"^{re.escape(prefix)}/state/(\d+)/(.+)$")
    params = _params_by_id(opt)
    for name, value in tensors.items():
        m = pat.match(name)
        if m:
            pid = int(m.group(1))
            p = params.get(pid)
            if _transposed(p, value) and value.shape == p.shape[::-1]:  # type: ignore[union-attr]
                value = value.t().contiguous()  # (out, in) -> the parameter's (in, out)
            state.setdefault(pid, {})[m.group(2)] = value
    for pid, extra in meta.get("state", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    # Saved moments are contiguous; a parameter stored in another (non-contiguous) layout needs
    # its moments in that layout too: the fused Adam kernel walks the storage of parameter and
    # moments in step, so mismatched strides would pair the wrong elements.
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for key, value in st.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    st[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    generator: torch.Generator,
    header: dict[str, Any],
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: the file to write (``.safetensors``).
        model: its ``state_dict`` (parameters and buffers) is stored under ``model/``.
        optimizers: name -> optimiser; moments under ``optim/<name>/``.
        generator: the run's torch generator; its state under ``rng/torch``.
        header: JSON-serialisable facts (step, config, numpy generator state, ...).
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {
        f"model/{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()
    }
    optim_meta = {}
    for name, opt in optimizers.items():
        t, m = _optimizer_tensors(f"optim/{name}", opt)
        tensors.update(t)
        optim_meta[name] = m
    tensors["rng/torch"] = generator.get_state().cpu().clone()
    meta = {"format": FORMAT, "header": json.dumps({**header, "optimizers": optim_meta})}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _fault_hook("written", header.get("step"), tmp)
        os.replace(tmp, path)
    except OSError as exc:
        # A full disk (ENOSPC), a quota, a read-only mount: drop the partial file, keep the older checkpoints.
        tmp.unlink(missing_ok=True)
        run = path.parent.parent if path.parent.name == "checkpoints" else None
        way_out = (
            f"free some space, then continue with: gatedvae train --resume {run}"
            if run
            else "free some space and save again"
        )
        raise CheckpointError(
            f"could not write checkpoint '{path}' ({exc.strerror or exc}); "
            f"the previous checkpoints are intact; {way_out}"
        ) from None
    _fsync_dir(path.parent)
    _fault_hook("renamed", header.get("step"), tmp)
    return path


def _fault_hook(stage: str, step: Any, tmp: Path) -> None:
    """Test-only fault injection for ``tests/test_faults.py``; one environment lookup per checkpoint.

    With ``GATEDVAE_TEST_CHECKPOINT_PAUSE=STAGE:STEP:MARKER`` the write of checkpoint STEP stops at
    STAGE, creates the file MARKER and sleeps, so that the test can SIGKILL the process exactly
    there. Stages: ``partial`` (the temporary file cut to half its length, as a kill in the middle
    of the write leaves it), ``written`` (the temporary file complete, not yet renamed) and
    ``renamed`` (in place; older checkpoints not yet pruned, status not yet updated).
    """
    spec = os.environ.get("GATEDVAE_TEST_CHECKPOINT_PAUSE")
    if not spec:
        return
    want, at, marker = spec.split(":", 2)
    if str(step) != at or want not in (stage, "partial"):
        return
    if want == "partial":
        if stage != "written":
            return
        with open(tmp, "rb+") as f:
            f.truncate(tmp.stat().st_size // 2)
    Path(marker).touch()
    time.sleep(600)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a checkpoint, read without loading the tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise ValueError("bad header length")
            raw = json.loads(f.read(n))
        meta = raw.get("__metadata__", {})
    except (ValueError, OSError, json.JSONDecodeError):
        raise CheckpointError(
            f"'{path}' is not a gatedvae checkpoint (not a safetensors file: pickled or truncated files are refused)"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"'{path}' is not a gatedvae checkpoint (format {meta.get('format')!r}, expected {FORMAT})"
        )
    return json.loads(meta["header"])


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint into ``model`` (and optimisers and generator, when given).

    Returns the header. Raises :class:`CheckpointError` for a foreign, truncated or
    mismatched file; nothing is unpickled.
    """
    path = Path(path)
    header = read_header(path)
    try:
        tensors = load_file(str(path), device="cpu")  # copied to the model's device by load_state_dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint '{path}' is damaged ({str(exc).splitlines()[0]}); "
            f"move it out of {path.parent} to use the checkpoint before it"
        ) from None
    if generator is not None and tensors["rng/torch"].numel() != generator.get_state().numel():
        raise CheckpointError(
            f"checkpoint '{path}' was written on {checkpoint_device(path, header)}; its random generator "
            f"state does not fit a generator on {generator.device}; load it without the generator"
        )
    state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    own = model.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    reshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        shape = (
            f", {len(reshaped)} of another shape "
            f"(e.g. {reshaped[0]} {tuple(state[reshaped[0]].shape)} vs {tuple(own[reshaped[0]].shape)})"
            if reshaped
            else ""
        )
        raise CheckpointError(
            f"checkpoint '{path}' does not fit this model "
            f"({len(missing)} missing and {len(unexpected)} unexpected tensors{shape}); "
            "was it written by another config?"
        )
    model.load_state_dict(state)
    for name, opt in (optimizers or {}).items():
        meta = header.get("optimizers", {}).get(name)
        if meta is None:
            continue
        _restore_optimizer(f"optim/{name}", opt, tensors, meta)
    if generator is not None:
        generator.set_state(tensors["rng/torch"])
    return header


#: Size in bytes of the CPU generator's state (a Mersenne Twister); CUDA's (Philox seed and offset) is 16.
_CPU_RNG_STATE_BYTES = 5056


def checkpoint_device(path: str | os.PathLike, header: dict[str, Any] | None = None) -> str:
    """The device the run was on when it wrote the checkpoint (``"cpu"``, ``"cuda:0"``, ...).

    The header's ``device`` (checkpoints of gatedvae 0.3 and later); for older ones ``"cpu"`` or
    ``"cuda"`` as the saved generator state's size tells.
    """
    header = read_header(path) if header is None else header
    if header.get("device"):
        return str(header["device"])
    try:
        with safe_open(str(path), "pt") as f:
            size = f.get_slice("rng/torch").get_shape()[0]
    except (SafetensorError, OSError, ValueError, KeyError):
        return "cpu"
    return "cpu" if size == _CPU_RNG_STATE_BYTES else "cuda"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(directory: str | os.PathLike) -> tuple[int, Path] | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}.safetensors"
