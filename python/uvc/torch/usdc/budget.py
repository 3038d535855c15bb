"""The budget term of a USDC run as a torch loss: `uvc.usdc.resource_loss` (Swift) behind an
autograd function, called once per optimizer step on small per-layer arrays."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...cost import Convention, as_convention
from ...latency import LatencyTable
from ...settings import BUDGET_MODES
from ...spec import ViTSpec
from ...usdc import resource_loss

__all__ = ["ResourceBudget", "BUDGET_MODES"]


class _ResourceLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, budget: "ResourceBudget", head, neuron, part, rates, gate_probs):
        tensors = (head, neuron, part, rates, gate_probs)
        # One device-to-host copy for all five small arrays.
        flat = torch.cat([t.detach().reshape(-1) for t in tensors]).double().cpu().numpy()
        arrays, at = [], 0
        for t in tensors:
            arrays.append(flat[at:at + t.numel()].reshape(tuple(t.shape)))
            at += t.numel()
        res = budget.evaluate(*arrays)
        grads = [torch.from_numpy(res.grad[name]).to(device=t.device, dtype=t.dtype) for name, t in
                 zip(("head_probs", "neuron_probs", "part_probs", "rates", "gate_probs"), tensors)]
        ctx.save_for_backward(*grads)
        return head.new_tensor(res.loss)

    @staticmethod
    def backward(ctx, upstream):
        return (None,) + tuple(upstream * g for g in ctx.saved_tensors)


class ResourceBudget:
    """USDC's budget on F, the expected cost over the dense cost (gate networks included): MACs,
    or with ``latency`` (a `uvc.LatencyTable`) ms of that table.

    ``mode="penalty"``: the paper's γ·(F − ``target``)² (γ = ``gamma``, 100 by default).
    ``mode="dual"``: UVC-style primal-dual, z·(F − target) with the dual z raised by `step`
    (z ← max(0, z + ``dual_lr``·(F − target)) after every optimizer step), so F is pushed down
    for as long as it exceeds the target. ``gate_costs``: (depth, options) cost of each
    gate-network option, MACs per sample, or with ``latency`` ms per batch of the table's batch
    size (`uvc.torch.usdc.gates.gate_ms`); zero columns: no gates.

    ``static_target``: also γ·(F_s − static_target)² with F_s the static part alone (every kept
    part running, no gate networks), which fixes how the budget splits between static and
    dynamic compression. Without it the split is left to the optimiser, and the gate networks,
    with many weights each, win that race: a short search then meets the target with gates
    alone and prunes nothing.
    """

    def __init__(self, spec: ViTSpec, target: float, gate_costs: np.ndarray, *, gamma: float = 100.0,
                 mode: str = "penalty", dual_lr: float = 1.0, static_target: float | None = None,
                 convention: "str | Convention" = "uvc", latency: LatencyTable | None = None) -> None:
        if mode not in BUDGET_MODES:
            raise ValueError(f"ResourceBudget: mode must be one of {BUDGET_MODES}, got {mode!r}")
        if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target:
            raise ValueError(f"ResourceBudget: target must be a positive ratio of the dense "
                             f"{'MACs' if latency is None else 'latency'}, got {target!r}")
        if not isinstance(dual_lr, (int, float)) or isinstance(dual_lr, bool) or dual_lr < 0:
            raise ValueError(f"ResourceBudget: dual_lr must be a number >= 0, got {dual_lr!r}")
        if static_target is not None and (isinstance(static_target, bool) or not isinstance(static_target, (int, float))
                                          or not 0 < static_target):
            raise ValueError(f"ResourceBudget: static_target must be a positive ratio or None, got {static_target!r}")
        self.spec, self.target, self.mode = spec, float(target), mode
        self.gamma = float(gamma) if mode == "penalty" else 0.0
        self.dual_lr, self.z = float(dual_lr), 0.0
        self.static_target = None if static_target is None else float(static_target)
        self.convention = as_convention(convention)
        if latency is not None and not isinstance(latency, LatencyTable):
            raise TypeError(f"ResourceBudget: latency must be a uvc.LatencyTable, got {type(latency).__name__}")
        self.latency = None if latency is None else latency.check(spec)
        self.gate_costs = np.ascontiguousarray(gate_costs, dtype=np.float64)
        self.last = self.last_static = None

    @property
    def unit(self) -> str:
        """What the costs count: "MACs", or "ms" with a latency table."""
        return "MACs" if self.latency is None else "ms"

    def _loss(self, **arrays):
        return resource_loss(self.spec, **arrays, convention=self.convention, latency=self.latency)

    def evaluate(self, head_probs, neuron_probs, part_probs, rates, gate_probs):
        """`uvc.usdc.resource_loss` with this budget's settings (numpy in, numpy out); with a
        ``static_target``, its term is added to the loss and the gradients."""
        gates = {"gate_macs" if self.latency is None else "gate_ms": self.gate_costs, "gate_probs": gate_probs}
        self.last = res = self._loss(head_probs=head_probs, neuron_probs=neuron_probs, part_probs=part_probs,
                                     rates=rates, **gates, target=self.target, gamma=self.gamma, dual=self.z)
        if self.static_target is None:
            return res
        self.last_static = st = self._loss(head_probs=head_probs, neuron_probs=neuron_probs, part_probs=part_probs,
                                           rates=np.ones_like(rates), target=self.static_target,
                                           gamma=self.gamma or 100.0)
        grad = dict(res.grad)
        for name in ("head_probs", "neuron_probs", "part_probs"):
            grad[name] = grad[name] + st.grad[name]
        self.last = dataclasses.replace(res, loss=res.loss + st.loss, grad=grad)
        return self.last

    def loss(self, head_probs: torch.Tensor, neuron_probs: torch.Tensor, part_probs: torch.Tensor,
             rates: torch.Tensor, gate_probs: torch.Tensor) -> torch.Tensor:
        """The budget term as a differentiable scalar (shapes as `uvc.usdc.resource_loss`)."""
        return _ResourceLoss.apply(self, head_probs, neuron_probs, part_probs, rates, gate_probs)

    def step(self) -> None:
        """Dual ascent on z after an optimizer step (mode ``"dual"``; nothing in penalty mode)."""
        if self.mode == "dual" and self.last is not None:
            self.z = max(0.0, self.z + self.dual_lr * (self.last.ratio - self.target))

    def stats(self) -> dict:
        """Plain floats of the last evaluation: F (``expected_ratio``), its MACs
        (``expected_macs``) or ms (``expected_ms``), the whole loss, z, and F_s with a
        ``static_target``."""
        if self.last is None:
            return {}
        out = {"expected_ratio": self.last.ratio, f"expected_{self.unit.lower()}": self.last.cost,
               "resource_loss": self.last.loss, "target_ratio": self.target, "z": self.z}
        if self.last_static is not None:
            out.update(static_expected_ratio=self.last_static.ratio, static_target_ratio=self.static_target)
        return out

    def state_dict(self) -> dict:
        return {"z": self.z}

    def load_state_dict(self, d: dict) -> None:
        self.z = float(d["z"])
