"""USDC (seed 002) on timm ViTs: static keep probabilities and dynamic group-level gates
searched jointly under a MACs budget, physical pruning of the static part, fine-tuning and
inference with batch-level block skipping, and saving/loading of the dynamic model.

`USDCSearch` (stage 1) → `USDCSearch.export` → `DynamicViT` + `USDCFinetune` (stage 2) →
`save` / `load`. The numpy-level mathematics (partitions, group gates, resource loss) is in
`uvc.usdc`. The search loads on first access, so loading a saved model pulls in no search code.
"""
from .budget import BUDGET_MODES, ResourceBudget
from .dynamic import DynamicViT, USDCFinetune
from .export import is_dynamic_folder, load, save
from .gates import GATE_KINDS, GateChoice, GateNet, gate_macs, gate_ms, group_gates

__all__ = ["USDCSearch", "USDCArch", "DynamicViT", "USDCFinetune", "ResourceBudget", "BUDGET_MODES", "GateNet",
           "GateChoice", "GATE_KINDS", "gate_macs", "gate_ms", "group_gates", "save", "load", "is_dynamic_folder"]

_LAZY = {"USDCSearch": "search", "USDCArch": "search"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
