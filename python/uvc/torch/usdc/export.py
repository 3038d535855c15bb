"""Saving and loading a `DynamicViT` without pickling modules or needing the training code.

A saved model is a folder with ``arch.json`` (format tag, `ViTSpec`, `ArchPlan`, the SlimViT
keyword configuration, one gate-network config per kept block, the gate settings, free-form
``meta``) and ``model.safetensors`` (slim weights under ``slim.``, gate networks under
``gates.``, BatchNorm statistics included). `load` needs torch and safetensors only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..export import ARCH_FILE, load_state, read_folder, saved_dtype, what_is_wrong, write_folder
from .dynamic import DynamicViT

__all__ = ["FORMAT", "save", "load", "is_dynamic_folder"]

FORMAT = "uvc.usdc/1"


def save(model: DynamicViT, path: str | os.PathLike, *, meta: dict | None = None) -> Path:
    """Writes ``model`` to the folder ``path`` (created if needed; each file atomically) and
    returns it. ``meta``: JSON-serialisable metadata, defaults to ``model.slim.meta``."""
    if not isinstance(model, DynamicViT):
        raise TypeError(f"save: model must be a DynamicViT, got {type(model).__name__}")
    arch = {"spec": model.spec.to_dict(), "plan": model.plan.to_dict(), "config": model.slim.config,
            "gates": [g.config() for g in model.gates], "tau": model.tau, "grouping": model.grouping}
    return write_folder(path, FORMAT, arch, model.state_dict(), model.slim.meta if meta is None else meta)


def is_dynamic_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by `save`."""
    arch = Path(path) / ARCH_FILE
    if not arch.is_file():
        return False
    try:
        return json.loads(arch.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> DynamicViT:
    """Rebuilds a model written by `save`, in eval mode, on ``device`` (CPU when None), in the
    dtype it was saved in. Raises FileNotFoundError / ValueError naming the bad file."""
    arch, spec, plan, state, arch_path, weights_path = read_folder(path, FORMAT, "uvc.torch.usdc.save")
    try:
        gates, settings = list(arch["gates"]), dict(tau=float(arch["tau"]), grouping=arch["grouping"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"load: {ARCH_FILE} at {arch_path} is malformed: {what_is_wrong(e)}") from None
    device = torch.device("cpu" if device is None else device)
    try:
        model = DynamicViT(spec, plan, gates, device=device, dtype=saved_dtype(state), **settings, **arch["config"])
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"load: {ARCH_FILE} at {arch_path} has an unknown config: {e}") from None
    load_state(model, state, arch_path, weights_path)
    model.slim.meta = arch["meta"]
    return model.eval()
