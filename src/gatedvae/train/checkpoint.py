"""Checkpoints: config + tensors in one safetensors file, written atomically, loaded without pickle.

A checkpoint holds every tensor the run needs to continue bitwise (model parameters and
buffers, optimiser moments, the torch generator's state) and a JSON header with the rest
(step, resolved config, the numpy generator's state, optimiser hyperparameters). It is
written to a temporary file, flushed to disk, and renamed into place, so a run killed at
any moment leaves either the previous checkpoint or the new one, never half a file.
Nothing is ever unpickled: safetensors stores raw tensors, JSON the rest.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import GatedVAEError

__all__ = ["save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_checkpoint", "CheckpointError", "FORMAT"]

FORMAT = "gatedvae-checkpoint-1"
_NAME = re.compile(r"^step-(\d{9})\.safetensors$")


class CheckpointError(GatedVAEError):
    """A checkpoint file is missing, truncated, foreign or unsafe."""


def _optimizer_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/state/{pid}/{key}"] = value.detach().cpu().clone().contiguous()
            else:
                meta_state.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": meta_state}


def _restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    pat = re.compile(rf"^{re.escape(prefix)}/state/(\d+)/(.+)$")
    for name, value in tensors.items():
        m = pat.match(name)
        if m:
            state.setdefault(int(m.group(1)), {})[m.group(2)] = value
    for pid, extra in meta.get("state", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


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
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


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
        raise CheckpointError(f"'{path}' is not a gatedvae checkpoint (format {meta.get('format')!r}, expected {FORMAT})")
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
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{path}' is damaged ({str(exc).splitlines()[0]}); resume from an earlier one") from None
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    missing = set(model.state_dict()) - set(state)
    unexpected = set(state) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit this model ({len(missing)} missing and {len(unexpected)} unexpected tensors); "
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
