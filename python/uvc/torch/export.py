"""Saving, loading and ONNX export of a `SlimViT`, without pickling modules.

A saved model is a folder with ``arch.json`` (format tag, `ViTSpec`, `ArchPlan`, the
SlimViT keyword configuration, free-form ``meta``) and ``model.safetensors`` (the state
dict). `load` rebuilds the model from these two files with torch and safetensors only.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .._files import read_json
from ..plan import ArchPlan
from ..spec import ViTSpec
from .slim import SlimViT

__all__ = ["FORMAT", "save", "load", "export_onnx"]

FORMAT = "uvc.slim/1"
ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"


def _check_model(model: Any, who: str) -> SlimViT:
    if not isinstance(model, SlimViT):
        raise TypeError(f"{who}: model must be a uvc.torch.SlimViT (build one with SlimViT.from_timm), "
                        f"got {type(model).__name__}")
    return model


def save(model: SlimViT, path: str | os.PathLike, *, meta: dict | None = None) -> Path:
    """Writes ``model`` to the folder ``path`` (created if needed) and returns it.

    ``meta``: JSON-serialisable metadata (e.g. input mean/std, class names); defaults to
    ``model.meta``. Each file is written atomically.
    """
    _check_model(model, "save")
    arch = {"spec": model.spec.to_dict(), "plan": model.plan.to_dict(), "config": model.config}
    return write_folder(path, FORMAT, arch, model.state_dict(), model.meta if meta is None else meta)


def write_folder(path: str | os.PathLike, fmt: str, arch: dict, state: dict, meta: Any) -> Path:
    """Writes ``arch`` (plus the format tag ``fmt`` and ``meta``) as ``arch.json`` and ``state``
    as ``model.safetensors`` into the folder ``path``, each atomically; returns the folder.
    Raises TypeError when ``meta`` is not a JSON-serialisable dict."""
    from safetensors.torch import save_file
    if not isinstance(meta, dict):
        raise TypeError(f"save: meta must be a dict, got {type(meta).__name__}")
    try:
        text = json.dumps({"format": fmt, **arch, "meta": dict(meta)}, indent=1)
    except TypeError as e:
        raise TypeError(f"save: meta is not JSON-serialisable ({e})") from None
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(tensors, folder / (WEIGHTS_FILE + ".tmp"), metadata={"format": fmt})
    os.replace(folder / (WEIGHTS_FILE + ".tmp"), folder / WEIGHTS_FILE)
    (folder / (ARCH_FILE + ".tmp")).write_text(text)
    os.replace(folder / (ARCH_FILE + ".tmp"), folder / ARCH_FILE)
    return folder


def read_folder(path: str | os.PathLike, fmt: str, writer: str) -> tuple[dict, ViTSpec, ArchPlan, dict, Path, Path]:
    """Reads a folder written by `write_folder` with format tag ``fmt`` (``writer``: the save
    function named in errors): the arch dict, its spec and plan, the CPU state dict, and the
    two file paths. Raises FileNotFoundError / ValueError naming the bad file."""
    from safetensors import safe_open
    folder = Path(path)
    arch_path, weights_path = folder / ARCH_FILE, folder / WEIGHTS_FILE
    for p in (arch_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"load: {p} not found (expected a folder written by {writer})")
    arch = read_json(arch_path, f"load: {ARCH_FILE} at {arch_path}")
    if not isinstance(arch, dict) or arch.get("format") != fmt:
        got = f"format {arch.get('format')!r}" if isinstance(arch, dict) else f"a JSON {type(arch).__name__}"
        raise ValueError(f"load: {ARCH_FILE} at {arch_path} has {got}, expected format {fmt!r} "
                         f"(a folder written by {writer})")
    try:
        spec_fields = dict(arch["spec"])
        if "class_token" not in spec_fields and "class_token" in arch.get("config", {}):
            # uvc 0.2 kept the class token in the layer configuration only.
            spec_fields["class_token"] = arch["config"]["class_token"]
        spec = ViTSpec.from_dict(spec_fields)
        plan = ArchPlan.from_dict(arch["plan"], spec=spec)
        arch["config"], arch["meta"] = upgrade_config(dict(arch["config"])), arch.get("meta", {})
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"load: {ARCH_FILE} at {arch_path} is malformed: {what_is_wrong(e)}") from None
    try:
        with safe_open(weights_path, framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"load: {WEIGHTS_FILE} at {weights_path} is truncated or not a safetensors file: "
                         f"{e}") from None
    return arch, spec, plan, state, arch_path, weights_path


def upgrade_config(config: dict) -> dict:
    """A config as uvc 0.2.0 wrote it, in today's keywords: ``gelu_approximate`` ("none" or
    "tanh") became ``act`` ("gelu" or "gelu_tanh")."""
    if "gelu_approximate" in config and "act" not in config:
        old = config.pop("gelu_approximate")
        config["act"] = {"none": "gelu", "tanh": "gelu_tanh"}.get(old, old)
    return config


def what_is_wrong(e: Exception) -> str:
    """What a KeyError / TypeError / ValueError from reading a file's dict says is wrong."""
    return f"no key {e.args[0]!r}" if isinstance(e, KeyError) else str(e)


def load_state(model: torch.nn.Module, state: dict, arch_path: Path, weights_path: Path) -> None:
    """Loads ``state`` strictly into ``model``; a mismatch is a ValueError naming both files."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"load: {WEIGHTS_FILE} at {weights_path} does not match {ARCH_FILE} at {arch_path} "
                         f"(weights of another model?): {e}") from None


def saved_dtype(state: dict) -> torch.dtype | None:
    """The dtype of the first floating-point tensor of ``state`` (the model's dtype)."""
    return next((t.dtype for t in state.values() if t.is_floating_point()), None)


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> SlimViT:
    """Rebuilds a model written by `save`, in eval mode, on ``device`` (CPU when None), in the
    dtype it was saved in. Raises FileNotFoundError / ValueError naming the bad file."""
    arch, spec, plan, state, arch_path, weights_path = read_folder(path, FORMAT, "uvc.torch.save")
    device = torch.device("cpu" if device is None else device)
    try:
        model = SlimViT(spec, plan, **arch["config"], device=device, dtype=saved_dtype(state))
    except TypeError as e:
        raise ValueError(f"load: {ARCH_FILE} at {arch_path} has an unknown config: {e}") from None
    load_state(model, state, arch_path, weights_path)
    model.meta = arch["meta"]
    return model.eval()


def export_onnx(model: SlimViT, path: str | os.PathLike, batch_size: int = 1, opset: int = 17) -> Path:
    """Writes ``model`` (eval mode, explicit attention) as ONNX to ``path`` with input ``images``
    (batch, C, H, W) and output ``logits``; the batch axis is dynamic, ``batch_size`` is the
    example used for tracing. Train mode and fused attention are restored after."""
    from .counter import unfused_attention
    _check_model(model, "export_onnx")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"export_onnx: batch_size must be a positive int, got {batch_size!r}")
    spec = model.spec
    ref = model.pos_embed
    example = torch.zeros(batch_size, spec.in_channels, *spec.image_size, device=ref.device, dtype=ref.dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        # The TorchScript exporter needs no onnxscript (the torch.export-based one does), and
        # explicit attention exports at any opset. Its deprecation notice is not the caller's to act on.
        with unfused_attention(model), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    finally:
        model.train(was_training)
    return path
