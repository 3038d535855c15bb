"""The torch / timm side of uvc: read a timm ViT, compress it, build its slim copy, save, load,
export, count.

Imported only when used: ``import uvc`` never imports torch. The training parts
(`Compressor`, `DistillationLoss`, `BudgetMissWarning`, `prune`: one-shot pruning with
least-squares reconstruction) load on first access, so loading an
exported model pulls in none of them.
"""
from .counter import count_macs, fvcore_macs
from .export import export_onnx, load, save
from .introspect import UnsupportedModelError, blocks, check_supported, spec_from_model
from .latency import compare_latency, measure_latency, steady_malloc
from .slim import SlimViT, reduce_tokens

__all__ = ["SlimViT", "reduce_tokens", "save", "load", "export_onnx", "spec_from_model", "check_supported", "blocks",
           "UnsupportedModelError", "count_macs", "fvcore_macs", "measure_latency", "compare_latency",
           "steady_malloc", "Compressor", "DistillationLoss", "BudgetMissWarning", "prune"]

_LAZY = {"Compressor": "compress", "DistillationLoss": "distill", "BudgetMissWarning": "pipeline", "prune": "oneshot"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
