"""Independent MAC counters for any torch module, to check the cost model against.

Units: **MACs** (multiply-accumulates); FLOPs = 2 × MACs.

`count_macs` uses torch's own ``FlopCounterMode`` (matrix products, linear, convolution and
SDPA kernels; it reports FLOPs, two per MAC) and adds LayerNorm at 5 MACs per input element
with an affine transform, 4 without, with fused attention off like fvcore: the MACs of the
model's attention, not the zero value columns `uvc.torch.slim.attend` pads for SDPA's fused
kernel. That is fvcore's convention on timm models, i.e. the cost model's ``"fvcore"`` preset:
element-wise ops (softmax, GELU, bias adds, residual adds, scaling) are not counted.

`fvcore_macs` runs fvcore's ``FlopCountAnalysis`` (whose "flops" are MACs), with fused
attention switched off first because fvcore cannot see inside SDPA.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["count_macs", "fvcore_macs", "unfused_attention"]


def _check(model: Any, example_input: Any, who: str) -> tuple:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who}: model must be a torch nn.Module, got {type(model).__name__}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError(f"{who}: example_input must be a tensor or a tuple of tensors")
    return inputs


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Sets ``fused_attn = False`` on every submodule that has it (timm Attention, `SlimAttention`)
    and restores each module's value on exit."""
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    try:
        for m, _ in saved:
            m.fused_attn = False
        yield
    finally:
        for m, value in saved:
            m.fused_attn = value


def _layer_norm_flops(input_shape, normalized_shape, weight_shape=None, bias_shape=None, *args, out_shape=None,
                      **kwargs) -> int:
    # Reported in FLOPs (2 per MAC) like every other entry of FlopCounterMode.
    elements = 1
    for s in input_shape:
        elements *= s
    return 2 * elements * (5 if weight_shape is not None else 4)


def count_macs(model: nn.Module, example_input: Any) -> dict:
    """MACs of one forward pass of ``model`` on ``example_input`` (a tensor or tuple of tensors),
    in eval mode with fused attention off (both restored after).

    Returns ``{"macs": int, "flops": int, "by_op": {aten op name: MACs}}``; ``flops`` is 2 × MACs.
    The count is for the whole input batch.
    """
    from torch.utils.flop_counter import FlopCounterMode
    inputs = _check(model, example_input, "count_macs")
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.native_layer_norm: _layer_norm_flops})
    # With gradients on: under no_grad, FlopCounterMode's module tracker fails on a module fed a
    # view of a parameter (the latent query of timm's attention-pool head).
    with _eval(model), unfused_attention(model), counter:
        model(*inputs)
    by_op = {str(op): int(f) // 2 for op, f in counter.get_flop_counts().get("Global", {}).items()}
    macs = sum(by_op.values())
    return {"macs": macs, "flops": 2 * macs, "by_op": by_op}


def fvcore_macs(model: nn.Module, example_input: Any) -> int:
    """Total MACs fvcore's ``FlopCountAnalysis`` reports for ``model`` on ``example_input``
    (whole batch), in eval mode with fused attention off (both restored after)."""
    with warnings.catch_warnings():
        # fvcore scripts a loss function at import, which newer torch flags as deprecated.
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    inputs = _check(model, example_input, "fvcore_macs")
    with _eval(model), unfused_attention(model), torch.no_grad():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())
