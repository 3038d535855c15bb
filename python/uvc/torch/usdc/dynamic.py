"""`DynamicViT`: USDC's stage-2 and inference model, a statically slimmed ViT whose blocks are
gated per batch by small gate networks; and `USDCFinetune`, its budget during fine-tuning.

Training: every step the batch is cut into sub-groups (`uvc.usdc.GroupSampler`, one core call)
and every group takes one straight-through decision per block part (group-level gate
augmentation). Inference: one decision per part for the whole batch, from the batch's mean
log-odds; a part that does not run is not computed at all, so the saving is real at every
batch size. Deciding costs one host sync per block (the branch is data-dependent control flow).
Needs torch only (no timm), like `SlimViT`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ...cost import Convention, as_convention, count
from ...latency import LatencyTable
from ...plan import ArchPlan
from ...spec import ViTSpec
from ...usdc import GROUPINGS, GroupSampler, resource_loss
from ..slim import SlimViT
from .budget import ResourceBudget
from .gates import GateNet, gate_macs, gate_ms, group_gates

__all__ = ["DynamicViT", "USDCFinetune"]


class DynamicViT(nn.Module):
    """``slim`` (a `SlimViT` of ``spec`` pruned to ``plan``, dense tokens) plus one `GateNet` per
    kept block, built from ``gates`` (one dict of `GateNet.config` per kept block).

    ``tau``: gate temperature in training; ``grouping``: how training batches are cut
    (`uvc.usdc.GROUPINGS`); ``seed``: the sampler's seed. Other keywords go to `SlimViT`.
    Counts, in eval mode, how often each part ran (`execution_rates`, `average_macs`)."""

    def __init__(self, spec: ViTSpec, plan: ArchPlan, gates: Sequence[dict], *, tau: float = 1.0,
                 grouping: str = "mixed", seed: int = 0, device=None, dtype=None, **slim_config) -> None:
        super().__init__()
        if any(layer.tokens != spec.num_tokens for layer in plan.layers):
            raise ValueError("DynamicViT: the plan drops tokens; USDC gates blocks of dense-token plans only")
        if grouping not in GROUPINGS:
            raise ValueError(f"DynamicViT: grouping must be one of {GROUPINGS}, got {grouping!r}")
        if not tau > 0:
            raise ValueError(f"DynamicViT: tau must be > 0, got {tau!r}")
        self.slim = SlimViT(spec, plan, device=device, dtype=dtype, **slim_config)
        if len(gates) != len(self.slim.blocks):
            raise ValueError(f"DynamicViT: {len(gates)} gate configs for {len(self.slim.blocks)} kept blocks")
        self.gates = nn.ModuleList(GateNet(g["kind"], spec.embed_dim, hidden=g["hidden"], kernel=g["kernel"],
                                           device=device, dtype=dtype) for g in gates)
        self.tau, self.grouping = float(tau), grouping
        self.sampler = GroupSampler(seed)
        self.last_rates: torch.Tensor | None = None
        self.reset_stats()

    @classmethod
    def from_parts(cls, slim: SlimViT, gates: Sequence[GateNet], *, tau: float = 1.0,
                   grouping: str = "mixed") -> "DynamicViT":
        """A DynamicViT holding copies of ``slim``'s and ``gates``' weights, on their device."""
        ref = slim.pos_embed
        model = cls(slim.spec, slim.plan, [g.config() for g in gates], tau=tau, grouping=grouping,
                    device=ref.device, dtype=ref.dtype, **slim.config)
        model.slim.load_state_dict(slim.state_dict())
        for mine, theirs in zip(model.gates, gates):
            mine.load_state_dict(theirs.state_dict())
        model.slim.meta = dict(slim.meta)
        return model

    @property
    def spec(self) -> ViTSpec:
        return self.slim.spec

    @property
    def plan(self) -> ArchPlan:
        return self.slim.plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.slim
        x = s.norm_pre(s._pos_embed(s.patch_embed(x)))
        b = x.shape[0]
        if self.training:
            p = self.sampler.sample(b, 2 * len(s.blocks), self.grouping)
            groups, sizes, noise = (torch.from_numpy(a).to(x.device) for a in (p.groups, p.sizes, p.noise))
            rates = []
        for j, (block, gate) in enumerate(zip(s.blocks, self.gates)):
            logits = gate(x)
            if self.training:
                g, probs = group_gates(logits, groups, sizes, noise[:, 2 * j:2 * j + 2], tau=self.tau)
                rates.append(probs.mean(dim=0))
                if block.attn is not None:
                    x = x + g[:, 0, None, None] * block.ls1(block.attn(block.norm1(x)))
                if block.mlp is not None:
                    x = x + g[:, 1, None, None] * block.ls2(block.mlp(block.norm2(x)))
                continue
            # One decision per part for the whole batch; the host needs it to skip the branch.
            run_attn, run_mlp = (logits.mean(dim=0) > 0).tolist()
            self._runs[j] += (b * run_attn, b * run_mlp)
            if run_attn and block.attn is not None:
                x = x + block.ls1(block.attn(block.norm1(x)))
            if run_mlp and block.mlp is not None:
                x = x + block.ls2(block.mlp(block.norm2(x)))
        if self.training:
            self.last_rates = torch.stack(rates)
        else:
            self._images += b
        return s.forward_head(s.norm(x))

    # ---- execution statistics (eval mode) ----

    def reset_stats(self) -> None:
        self._runs = np.zeros((len(self.slim.blocks), 2))
        self._images = 0

    def execution_rates(self) -> np.ndarray:
        """(depth, 2): fraction of the images since `reset_stats` (eval mode) for which each
        layer's MHSA / MLP gate said run; NaN for a part the static plan removed."""
        out = np.full((self.spec.depth, 2), np.nan)
        rates = self._runs / max(self._images, 1)
        for j, l in enumerate(self.slim.block_index):
            layer = self.plan.layers[l]
            out[l] = [rates[j, 0] if layer.attn else np.nan, rates[j, 1] if layer.mlp else np.nan]
        return out

    def static_inputs(self, convention: "str | Convention" = "uvc", latency: LatencyTable | None = None) -> dict:
        """The fixed arrays of `uvc.usdc.resource_loss` for this model: 0/1 keep probabilities of
        heads (depth, heads), neurons (depth, mlp_hidden) and parts (depth, 2), and each layer's
        gate-network MACs (``gate_macs``, depth × 1) with weight 1; with a ``latency`` table the
        gate networks' ms where it was made (``gate_ms``, `uvc.torch.usdc.gates.gate_ms`)."""
        spec, plan = self.spec, self.plan
        d = spec.depth
        heads, neurons, parts = np.zeros((d, spec.num_heads)), np.zeros((d, spec.mlp_hidden)), np.zeros((d, 2))
        costs, probs = np.zeros((d, 1)), np.ones((d, 1))
        for l, layer in enumerate(plan.layers):
            heads[l, list(layer.heads)] = 1
            neurons[l, list(layer.neurons)] = 1
            parts[l] = [layer.attn, layer.mlp]
        if latency is None:
            name = "gate_macs"
            def cost(g):
                return gate_macs(g.kind, spec.embed_dim, spec.num_tokens, hidden=g.hidden, kernel=g.kernel,
                                 convention=convention)
        else:
            # One timing per distinct gate network.
            name, ms = "gate_ms", {k: float(gate_ms(latency, [k[0]], hidden=k[1], kernel=k[2])[0])
                                   for k in sorted({(g.kind, g.hidden, g.kernel) for g in self.gates})}
            def cost(g):
                return ms[(g.kind, g.hidden, g.kernel)]
        for j, l in enumerate(self.slim.block_index):
            costs[l] = cost(self.gates[j])
        return dict(head_probs=heads, neuron_probs=neurons, part_probs=parts, gate_probs=probs, **{name: costs})

    def average_macs(self, convention: "str | Convention" = "uvc") -> dict:
        """MACs per image averaged over the images since `reset_stats` (eval mode), gate
        networks included: ``macs``, ``ratio`` (to the dense model), ``static_macs`` (every
        kept part running), ``dense_macs``. Exact: the cost is linear in the execution rates."""
        conv = as_convention(convention)
        fixed = self.static_inputs(conv)
        rates = np.nan_to_num(self.execution_rates(), nan=0.0)
        dense = count(self.spec, None, conv).macs
        avg = resource_loss(self.spec, **fixed, rates=rates, target=1.0, gamma=0.0, convention=conv).macs
        full = resource_loss(self.spec, **fixed, rates=np.ones_like(rates), target=1.0, gamma=0.0,
                             convention=conv).macs
        return {"macs": avg, "ratio": avg / dense, "static_macs": full, "dense_macs": dense}

    def average_latency(self, table: LatencyTable, *, rates: np.ndarray | None = None,
                        gate_ms: np.ndarray | None = None) -> dict:
        """The ``table``'s ms per batch at the execution rates since `reset_stats` (eval mode),
        gate networks included: ``ms``, ``ratio`` (to the table's dense ms), ``static_ms`` (every
        kept part running), ``dense_ms``. A prediction: linear in the rates, as the budget
        counts it. ``rates``: (depth, 2) rates to price instead (NaN: a pruned part), as
        `execution_rates` gives them. ``gate_ms``: (depth, 1) ms of each layer's gate network
        (`static_inputs` times them where the table was made when None)."""
        if gate_ms is None:
            fixed = self.static_inputs(latency=table)
        else:
            fixed = self.static_inputs()
            del fixed["gate_macs"]
            fixed["gate_ms"] = gate_ms
        rates = np.nan_to_num(self.execution_rates() if rates is None else rates, nan=0.0)
        avg = resource_loss(self.spec, **fixed, rates=rates, target=1.0, gamma=0.0, latency=table).cost
        full = resource_loss(self.spec, **fixed, rates=np.ones_like(rates), target=1.0, gamma=0.0,
                             latency=table).cost
        return {"ms": avg, "ratio": avg / table.dense_ms, "static_ms": full, "dense_ms": table.dense_ms}


class USDCFinetune:
    """USDC stage 2 on a `DynamicViT`: the budget F(g) (seed 002, Eq. 11) on the statically
    pruned model with its fixed gate networks; the static part is constant.

        ft = USDCFinetune(model, target=0.6)
        loss = criterion(x, model(x), y) + ft.resource_loss()
        ...; opt.step(); ft.step()

    ``gamma``, ``budget_mode``, ``dual_lr``, ``convention``, ``latency`` (a `uvc.LatencyTable`:
    ``target`` is then a ratio of its dense ms): see `ResourceBudget`."""

    def __init__(self, model: DynamicViT, target: float = 0.6, *, gamma: float = 100.0, budget_mode: str = "penalty",
                 dual_lr: float = 1.0, convention: str = "uvc", latency: LatencyTable | None = None) -> None:
        if not isinstance(model, DynamicViT):
            raise TypeError(f"USDCFinetune: model must be a DynamicViT, got {type(model).__name__}")
        if latency is not None and not isinstance(latency, LatencyTable):
            raise TypeError(f"USDCFinetune: latency must be a uvc.LatencyTable, got {type(latency).__name__}")
        self.model = model
        fixed = model.static_inputs(convention, latency=None if latency is None else latency.check(model.spec))
        costs = fixed.pop("gate_macs" if latency is None else "gate_ms")
        self.budget = ResourceBudget(model.spec, target, costs, gamma=gamma, mode=budget_mode, dual_lr=dual_lr,
                                     convention=convention, latency=latency)
        # What `uvc.torch.train.fit` logs each epoch: the budget term's state.
        self.solver = self.budget
        ref = model.slim.pos_embed
        self._fixed = {k: torch.tensor(v, device=ref.device, dtype=ref.dtype) for k, v in fixed.items()}
        self._rows = torch.tensor(model.slim.block_index, device=ref.device, dtype=torch.long)

    def resource_loss(self) -> torch.Tensor:
        """The budget term of the last training forward pass."""
        rates = self.model.last_rates
        if rates is None:
            raise RuntimeError("USDCFinetune.resource_loss: run a training forward pass first")
        f = self._fixed
        full = rates.new_zeros(self.model.spec.depth, 2).index_copy(0, self._rows, rates)
        return self.budget.loss(f["head_probs"], f["neuron_probs"], f["part_probs"], full, f["gate_probs"])

    def step(self) -> dict:
        self.budget.step()
        return {}

    def state_dict(self) -> dict:
        return {"sampler": self.model.sampler.state_dict(), "budget": self.budget.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.model.sampler.load_state_dict(d["sampler"])
        self.budget.load_state_dict(d["budget"])
