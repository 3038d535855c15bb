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

from ...plan import ArchPlan
from ...spec import ViTSpec
from .dynamic import DynamicViT

__all__ = ["FORMAT", "save", "load", "is_dynamic_folder"]

FORMAT = "uvc.usdc/1"
ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"


def save(model: DynamicViT, path: str | os.PathLike, *, meta: dict | None = None) -> Path:
    """Writes ``model`` to the folder ``path`` (created if needed; each file atomically) and
    returns it. ``meta``: JSON-serialisable metadata, defaults to ``model.slim.meta``."""
    from safetensors.torch import save_file
    if not isinstance(model, DynamicViT):
        raise TypeError(f"save: model must be a DynamicViT, got {type(model).__name__}")
    meta = dict(model.slim.meta) if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"save: meta must be a dict, got {type(meta).__name__}")
    arch = {"format": FORMAT, "spec": model.spec.to_dict(), "plan": model.plan.to_dict(),
            "config": model.slim.config, "gates": [g.config() for g in model.gates], "tau": model.tau,
            "grouping": model.grouping, "meta": meta}
    try:
        text = json.dumps(arch, indent=1)
    except TypeError as e:
        raise TypeError(f"save: meta is not JSON-serialisable ({e})") from None
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, folder / (WEIGHTS_FILE + ".tmp"), metadata={"format": FORMAT})
    os.replace(folder / (WEIGHTS_FILE + ".tmp"), folder / WEIGHTS_FILE)
    (folder / (ARCH_FILE + ".tmp")).write_text(text)
    os.replace(folder / (ARCH_FILE + ".tmp"), folder / ARCH_FILE)
    return folder


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
    from safetensors import safe_open
    folder = Path(path)
    arch_path, weights_path = folder / ARCH_FILE, folder / WEIGHTS_FILE
    for p in (arch_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"load: {p} not found (expected a folder written by uvc.torch.usdc.save)")
    try:
        arch = json.loads(arch_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"load: {arch_path} is not valid JSON ({e})") from None
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise ValueError(f"load: {arch_path} is not a {FORMAT!r} architecture file")
    try:
        spec = ViTSpec.from_dict(arch["spec"])
        plan = ArchPlan.from_dict(arch["plan"], spec=spec)
        config, gates, meta = dict(arch["config"]), list(arch["gates"]), arch.get("meta", {})
        settings = dict(tau=float(arch["tau"]), grouping=arch["grouping"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"load: {arch_path} is malformed: {e}") from None
    try:
        with safe_open(weights_path, framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"load: {weights_path} is not a readable safetensors file ({e})") from None
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
    device = torch.device("cpu" if device is None else device)
    try:
        model = DynamicViT(spec, plan, gates, device=device, dtype=dtype, **settings, **config)
    except (TypeError, KeyError) as e:
        raise ValueError(f"load: {arch_path} has an unknown config: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"load: {weights_path} does not match {arch_path}: {e}") from None
    model.slim.meta = meta
    return model.eval()
