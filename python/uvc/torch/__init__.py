"""The torch / timm side of uvc: read a timm ViT, build its slim copy, save, load, export, count.

Imported only when used: ``import uvc`` never imports torch.
"""
from .counter import count_macs, fvcore_macs
from .export import export_onnx, load, save
from .introspect import UnsupportedModelError, blocks, check_supported, spec_from_model
from .slim import SlimViT

__all__ = ["SlimViT", "save", "load", "export_onnx", "spec_from_model", "check_supported", "blocks",
           "UnsupportedModelError", "count_macs", "fvcore_macs"]
