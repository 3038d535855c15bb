"""USDC's dynamic gates in torch: the gate-network menu, its MACs and its measured ms, the
searched mixture of options, and group-level gates computed on the model's device.

A gate network reads a block's input tokens (B, N, D) and returns (B, 2) log-odds of running
the block's MHSA and MLP part. `group_gates` is the torch twin of `uvc.usdc.group_gates` (the
Swift reference it is tested against): each sub-group of the batch pools its members' log-odds
by their mean and takes one straight-through Gumbel-sigmoid decision for all of them.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...cost import Convention, as_convention
from ...latency import LatencyTable
from ...settings import GATE_KINDS

__all__ = ["GATE_KINDS", "GateNet", "GateChoice", "gate_macs", "gate_ms", "group_gates"]


class GateNet(nn.Module):
    """One gate network of kind ``kind`` (see `GATE_KINDS`) for tokens of width ``dim``.

    ``linear``: token mean → Linear(dim, 2). ``mlp_ln`` / ``mlp_bn``: token mean →
    Linear(dim, hidden) → LayerNorm / BatchNorm1d → ReLU → Linear(hidden, 2). ``conv1d``:
    Conv1d(dim, hidden, kernel, same padding) over the token axis → ReLU → token mean →
    Linear(hidden, 2). The last layer starts with small weights and bias ``init`` (log-odds of
    running), so a fresh gate keeps every part on and the model computes what it did.
    """

    def __init__(self, kind: str, dim: int, *, hidden: int = 16, kernel: int = 3, init: float = 3.0,
                 device=None, dtype=None) -> None:
        super().__init__()
        if kind not in GATE_KINDS:
            raise ValueError(f"GateNet: kind must be one of {GATE_KINDS}, got {kind!r}")
        for name, value in (("dim", dim), ("hidden", hidden), ("kernel", kernel)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GateNet: {name} must be a positive int, got {value!r}")
        if kernel % 2 == 0:
            raise ValueError(f"GateNet: kernel must be odd (same padding keeps the token count), got {kernel}")
        dd = dict(device=device, dtype=dtype)
        self.kind, self.dim, self.hidden, self.kernel = kind, dim, hidden, kernel
        self.conv = nn.Conv1d(dim, hidden, kernel, padding=kernel // 2, **dd) if kind == "conv1d" else None
        self.fc1 = nn.Linear(dim, hidden, **dd) if kind in ("mlp_ln", "mlp_bn") else None
        self.norm = (nn.LayerNorm(hidden, **dd) if kind == "mlp_ln"
                     else nn.BatchNorm1d(hidden, **dd) if kind == "mlp_bn" else None)
        self.out = nn.Linear(dim if kind == "linear" else hidden, 2, **dd)
        with torch.no_grad():
            self.out.weight.normal_(0.0, 0.01)
            self.out.bias.fill_(float(init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            h = F.relu(self.conv(x.transpose(1, 2))).mean(dim=2)
        elif self.fc1 is not None:
            h = F.relu(self.norm(self.fc1(x.mean(dim=1))))
        else:
            h = x.mean(dim=1)
        return self.out(h)

    def config(self) -> dict:
        return {"kind": self.kind, "hidden": self.hidden, "kernel": self.kernel}


def gate_macs(kind: str, dim: int, tokens: int, *, hidden: int = 16, kernel: int = 3,
              convention: "str | Convention" = "uvc") -> float:
    """MACs per sample of a `GateNet` on ``tokens`` tokens of width ``dim``, under the cost
    model's ``convention``: matrix products and the convolution, LayerNorm at the convention's
    MACs per element, biases when the convention counts them. The token mean, ReLU and the
    eval-mode BatchNorm (an affine map that folds into the layer before it) are element-wise
    and count under no convention, like residual adds."""
    conv = as_convention(convention)
    b = 1.0 if conv.bias else 0.0
    if kind == "linear":
        return 2.0 * dim + b * 2
    if kind in ("mlp_ln", "mlp_bn"):
        norm = conv.layer_norm * hidden if kind == "mlp_ln" else 0.0
        return float(dim * hidden + 2 * hidden) + norm + b * (hidden + 2)
    if kind == "conv1d":
        return float(tokens * dim * hidden * kernel + 2 * hidden) + b * (tokens * hidden + 2)
    raise ValueError(f"gate_macs: kind must be one of {GATE_KINDS}, got {kind!r}")


def gate_ms(table: LatencyTable, kinds: Sequence[str] = GATE_KINDS, *, hidden: int = 16, kernel: int = 3,
            repeats: int = 30, warmup: int = 5) -> np.ndarray:
    """ms per batch of a `GateNet` of each of ``kinds``, where ``table`` was measured: its
    device type, dtype, CPU threads and batch size, on the spec's (B, N, D) tokens. Timed with
    what a `DynamicViT` does with the log-odds at inference: one decision per part for the
    batch, read by the host (at batch 1 on a CPU that costs as much as the network itself).

    Each gate is timed interleaved with the block's dense MHSA part (`uvc.torch.slim.SlimBlock`),
    and priced at the table's (scaled) dense MHSA ms times the measured ratio, so the machine's
    drift since the table was made cancels and the gate costs share the table's scale.
    Medians over ``repeats`` passes after ``warmup``. Raises ValueError when the table's device
    is not available here."""
    from ..latency import _measuring, _time_interleaved
    from ..profile import DTYPES, _resolve_device, _resolve_dtype
    from ..slim import SlimBlock
    if not isinstance(table, LatencyTable):
        raise TypeError(f"gate_ms: table must be a uvc.LatencyTable, got {type(table).__name__}")
    unknown = [k for k in kinds if k not in GATE_KINDS]
    if unknown or not kinds:
        raise ValueError(f"gate_ms: kinds must be a non-empty list of {GATE_KINDS}, got {list(kinds)!r}")
    info, spec = table.device, table.spec
    try:
        dev = _resolve_device(info.get("type", "cpu"))
        dtype = _resolve_dtype(DTYPES.get(info.get("dtype", "float32"), info.get("dtype")), dev)
    except ValueError as e:
        raise ValueError(f"gate_ms: latency table {table.source} was measured on {info.get('type')} "
                         f"({info.get('name')}); its gate networks must be timed there too: {e}") from None
    dd = dict(device=dev, dtype=dtype)
    gates = [GateNet(k, spec.embed_dim, hidden=hidden, kernel=kernel, **dd) for k in kinds]
    reference = SlimBlock(spec.embed_dim, num_heads=spec.num_heads, v_dim=spec.v_head_dim, mlp_hidden=0,
                          qk_dim=spec.qk_head_dim, gated_mlp=spec.gated_mlp, qk_norm=spec.qk_norm,
                          fused_attn=bool(info.get("sdpa", True)), **dd)
    gen = torch.Generator(device=dev).manual_seed(0)
    tokens = torch.randn((table.batch_size, spec.num_tokens, spec.embed_dim), generator=gen, device=dev).to(dtype)
    def decide(gate):
        return (gate(tokens).mean(dim=0) > 0).tolist()

    with _measuring(gates + [reference], info.get("threads")):
        times = _time_interleaved([functools.partial(decide, g) for g in gates] + [functools.partial(reference, tokens)],
                                  warmup=warmup, repeats=repeats, device=dev)
    median = np.median(times, axis=1)
    dense_attention = table.dense_attention_ms
    return median[:-1] / median[-1] * dense_attention


class GateChoice(nn.Module):
    """The searched gate of one layer: every option of ``kinds`` runs and their log-odds are
    mixed by the architecture weights softmax(``alpha``) (DARTS-style); `best` is the option
    the search settles on."""

    def __init__(self, dim: int, kinds: tuple[str, ...] = GATE_KINDS, *, hidden: int = 16, kernel: int = 3,
                 init: float = 3.0, device=None, dtype=None) -> None:
        super().__init__()
        if not kinds:
            raise ValueError("GateChoice: kinds is empty")
        self.kinds = tuple(kinds)
        self.options = nn.ModuleList(GateNet(k, dim, hidden=hidden, kernel=kernel, init=init, device=device,
                                             dtype=dtype) for k in self.kinds)
        self.alpha = nn.Parameter(torch.zeros(len(self.kinds), device=device, dtype=dtype))

    def probs(self) -> torch.Tensor:
        return self.alpha.softmax(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.probs()
        return sum(p[o] * g(x) for o, g in enumerate(self.options))

    def best(self) -> int:
        """Index of the option with the largest architecture weight."""
        return int(self.alpha.argmax())


def group_gates(logits: torch.Tensor, groups: torch.Tensor, sizes: torch.Tensor, noise: torch.Tensor, *,
                tau: float = 1.0, straight_through: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-level gates on the logits' device (the twin of `uvc.usdc.group_gates`).

    ``logits`` (B, C) log-odds of running each gated part; ``groups`` (B,) long group ids;
    ``sizes`` (G,) members per group; ``noise`` (G, C) logistic noise (zeros at eval). Group k
    pools D = mean of its members' logits; soft = σ((D + noise)/τ); the gate is
    [soft > ½] + (soft − soft.detach()) with ``straight_through`` (forward hard, gradient
    soft), else soft. Returns (gates, probs), (B, C) each: every member's gate and its group's
    run probability σ(D)."""
    pooled = logits.new_zeros(noise.shape).index_add(0, groups, logits)
    pooled = pooled / sizes.clamp_min(1).to(logits.dtype)[:, None]
    soft = torch.sigmoid((pooled + noise.to(logits.dtype)) / tau)
    if straight_through:
        # (soft − soft.detach()) is exactly 0 forward: the gate stays exactly 0 or 1.
        soft = (soft > 0.5).to(soft.dtype) + (soft - soft.detach())
    return soft[groups], torch.sigmoid(pooled)[groups]
