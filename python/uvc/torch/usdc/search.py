"""USDC stage 1 on a live timm ViT: static keep probabilities a and dynamic group gates g
searched jointly under the resource loss, then the static part pruned physically.

    search = USDCSearch(model, target=0.6)            # registers model.usdc (arch parameters, gates)
    for x, y in loader:
        loss = criterion(x, model(x), y) + search.resource_loss()
        opt.zero_grad(); loss.backward(); opt.step(); search.step()
    dyn = search.export()                             # DynamicViT: pruned by a, best gate per layer

The forward pass is changed by hooks only (Eq. 7–8 of seed 002, see `USDCSearch`). Per
optimizer step the core is called three times on small arrays, never per layer: the batch
partition with its gate noise and the noise of the static samples (both in the first block's
hook), and the resource loss.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from ...latency import LatencyTable
from ...plan import ArchPlan, LayerPlan
from ...settings import STATIC_MODES
from ...usdc import GROUPINGS, GroupSampler
from ..introspect import check_supported, spec_from_model
from ..slim import SlimViT
from .budget import ResourceBudget
from .gates import GATE_KINDS, GateChoice, gate_macs, gate_ms, group_gates

__all__ = ["USDCSearch", "USDCArch", "STATIC_MODES"]


class USDCArch(nn.Module):
    """The searched parameters, registered on the model as ``model.usdc``: static logit pairs
    (keep, prune) per head (depth, heads, 2), MLP neuron group (depth, groups, 2) and block part
    (depth, 2 parts, 2), a₀ = softmax(pair / ``static_tau``)[0]; and one `GateChoice` per layer."""

    def __init__(self, spec, *, static: bool, dynamic: bool, neuron_groups: int, keep_init: float,
                 gate_kinds: tuple[str, ...], gate_hidden: int, gate_kernel: int, gate_init: float,
                 static_mode: str = "sample", device=None, dtype=None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.static, self.dynamic, self.static_mode = static, dynamic, static_mode
        self.static_tau = 1.0
        d, m = spec.depth, neuron_groups
        self.head_logits = self.neuron_logits = self.part_logits = None
        if static:
            start = math.log(keep_init / (1 - keep_init))

            def pairs(*shape):
                t = torch.zeros(*shape, 2, **dd)
                t[..., 0] = start
                return nn.Parameter(t)
            self.head_logits, self.neuron_logits, self.part_logits = pairs(d, spec.num_heads), pairs(d, m), pairs(d, 2)
        self.gates = nn.ModuleList(GateChoice(spec.embed_dim, gate_kinds, hidden=gate_hidden, kernel=gate_kernel,
                                              init=gate_init, **dd) for _ in range(d)) if dynamic else None
        self._shape = (d, spec.num_heads, m)

    def keep_probs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """a₀ of heads (depth, heads), neuron groups (depth, groups), parts (depth, 2); ones
        without static search."""
        if not self.static:
            d, h, m = self._shape
            ref = next(self.parameters(), torch.empty(0))
            return ref.new_ones(d, h), ref.new_ones(d, m), ref.new_ones(d, 2)
        return tuple((t / self.static_tau).softmax(dim=-1)[..., 0]
                     for t in (self.head_logits, self.neuron_logits, self.part_logits))

    def static_scales(self, noise: torch.Tensor | None, tau: float) -> tuple[torch.Tensor, ...]:
        """What multiplies each head, neuron group and part in the forward pass. ``"softmax"``
        mode: a₀ itself (the paper's DARTS mixing). ``"sample"`` mode: with ``noise`` (logistic,
        one value per structure), a straight-through sample, 1 with probability a₀, whose
        gradient is that of σ((keep − prune)/τ_s + noise)/τ); without noise (eval), the decision
        the export keeps, [a₀ ≥ a₁]."""
        if not self.static or self.static_mode == "softmax":
            return self.keep_probs()
        out, at = [], 0
        for t in (self.head_logits, self.neuron_logits, self.part_logits):
            d = (t[..., 0] - t[..., 1]) / self.static_tau
            if noise is None:
                out.append((d >= 0).to(d.dtype))
                continue
            soft = torch.sigmoid((d + noise[at:at + d.numel()].reshape(d.shape).to(d.dtype)) / tau)
            # (soft − soft.detach()) is exactly 0 forward: the scale stays exactly 0 or 1.
            out.append((soft > 0.5).to(d.dtype) + (soft - soft.detach()))
            at += d.numel()
        return tuple(out)

    @property
    def static_count(self) -> int:
        """Number of static structures (heads, neuron groups, parts)."""
        return sum(t.shape[0] * t.shape[1] for t in (self.head_logits, self.neuron_logits, self.part_logits)) \
            if self.static else 0

    def kept(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bool masks of what survives: a structure is pruned when a₀ < a₁."""
        return tuple((t[..., 0] >= t[..., 1]).cpu().numpy() if t is not None else None
                     for t in (self.head_logits, self.neuron_logits, self.part_logits))


class USDCSearch:
    """Searches static (a) and dynamic (g) compression of ``model`` jointly (USDC stage 1).

    In the forward pass of block l (Eq. 7–8 of seed 002, applied to the residual branches):
    head i's output is scaled by a^h_{l,i}, neuron group k's by a^n_{l,k}, and the MHSA / MLP
    branch by a^a_l·g_{l,0} / a^m_l·g_{l,1}, with a the static scales (a₀ or a sample of the
    keep decision, see ``static_mode``) and g the gates of the layer's `GateChoice`, which
    reads the block input. (Eq. 8 as printed also scales the residual stream by a₀ or a₁; that
    halves a pretrained model's stream at every part and zeroes it for a skipped kept part, so
    the scales act on the branch, x + a·g·branch(x), which agrees with Eq. 8 whenever a and g
    are 0/1 with a kept part's skip weight a₁ read as 1.)

    Training: the batch is cut by ``grouping`` (`uvc.usdc.GROUPINGS`; ``"halving"`` is USDC's
    group-level augmentation, ``"mixed"``, the default, applies it to half the batch and lets the
    other half decide one sample at a time, which kept the accuracy within 0.18 points from batch
    1 to 256 on three demo seeds where halving moved up to 0.39) and every group takes one
    straight-through decision per part at temperature ``tau``. Eval: one decision per part for
    the whole batch (mean log-odds > 0).

    ``target``: wanted F, the expected MACs over the dense MACs, gate networks included; with
    ``latency`` (a `uvc.LatencyTable` measured for this model's shape) the expected ms of that
    table over its dense ms instead, the gate networks timed where the table was made
    (`uvc.torch.usdc.gates.gate_ms`), and ``static_target`` a ratio of the dense ms too.
    ``static`` / ``dynamic``: search a / g (both: USDC; dynamic only: a = 1). Neurons are pruned
    in groups of ``neuron_group_size``. ``keep_init``: initial a₀. ``static_mode``: how a acts
    in the forward pass (`USDCArch.static_scales`): ``"sample"`` (default) multiplies by a
    straight-through sample of the keep decision, so the network trains on the discrete
    structures the export keeps and cannot make up for a small a₀ by larger weights;
    ``"softmax"`` multiplies by a₀ itself as the paper does, which leaves many a₀ above ½ when
    the expected cost meets the target and the pruned model far above it after a short search.
    The budget counts a₀ in both. ``static_tau`` = (start, end): the temperature τ_s of a₀,
    lowered geometrically over ``anneal_steps`` optimizer steps (None: stays at start). Without
    it a short search meets the budget with every a₀ around 0.8 and nothing below ½, so the
    export prunes nothing; as τ_s falls, a₀ goes to 0 or 1, the expected cost becomes the cost
    of what the export keeps, and sampled structures become the exported ones. Gate options ``gate_kinds`` (width ``gate_hidden``, Conv1d
    kernel ``gate_kernel``, initial run log-odds ``gate_init``). ``gamma``, ``budget_mode``,
    ``dual_lr``, ``static_target``: see `ResourceBudget`. ``convention``: what the MACs count.
    ``seed``: every random choice (partitions, gate noise, static samples).
    """

    def __init__(self, model: nn.Module, target: float = 0.6, *, static: bool = True, dynamic: bool = True,
                 neuron_group_size: int = 8, gate_kinds: tuple[str, ...] = GATE_KINDS, gate_hidden: int = 16,
                 gate_kernel: int = 3, gate_init: float = 2.0, keep_init: float = 0.95, tau: float = 1.0,
                 grouping: str = "mixed", static_mode: str = "sample", gamma: float = 100.0,
                 budget_mode: str = "penalty", dual_lr: float = 1.0, static_target: float | None = None,
                 static_tau: tuple[float, float] = (1.0, 0.05), anneal_steps: int | None = None,
                 convention: str = "uvc", seed: int = 0, latency: LatencyTable | None = None) -> None:
        check_supported(model)
        spec = spec_from_model(model)
        if latency is not None:
            if not isinstance(latency, LatencyTable):
                raise TypeError(f"USDCSearch: latency must be a uvc.LatencyTable, got {type(latency).__name__}")
            latency.check(spec)
        if not (static or dynamic):
            raise ValueError("USDCSearch: search static, dynamic or both; got neither")
        if isinstance(neuron_group_size, bool) or not isinstance(neuron_group_size, int) \
                or neuron_group_size < 1 or spec.mlp_hidden % neuron_group_size:
            raise ValueError(f"USDCSearch: neuron_group_size must be a positive int dividing mlp_hidden "
                             f"{spec.mlp_hidden}, got {neuron_group_size!r}")
        if not 0 < keep_init < 1:
            raise ValueError(f"USDCSearch: keep_init must lie in (0, 1), got {keep_init!r}")
        if grouping not in GROUPINGS:
            raise ValueError(f"USDCSearch: grouping must be one of {GROUPINGS}, got {grouping!r}")
        if static_mode not in STATIC_MODES:
            raise ValueError(f"USDCSearch: static_mode must be one of {STATIC_MODES}, got {static_mode!r}")
        if not tau > 0:
            raise ValueError(f"USDCSearch: tau must be > 0, got {tau!r}")
        if len(static_tau) != 2 or not all(t > 0 for t in static_tau):
            raise ValueError(f"USDCSearch: static_tau must be two temperatures > 0 (start, end), got {static_tau!r}")
        if anneal_steps is not None and (isinstance(anneal_steps, bool) or not isinstance(anneal_steps, int)
                                         or anneal_steps < 1):
            raise ValueError(f"USDCSearch: anneal_steps must be a positive int or None, got {anneal_steps!r}")
        unknown = set(gate_kinds) - set(GATE_KINDS)
        if unknown or not gate_kinds:
            raise ValueError(f"USDCSearch: gate_kinds must be a non-empty subset of {GATE_KINDS}, got {gate_kinds!r}")
        ref = model.patch_embed.proj.weight
        self.model, self.spec = model, spec
        self.static, self.dynamic = static, dynamic
        self.neuron_group_size = neuron_group_size
        self.gate_kinds, self.gate_hidden, self.gate_kernel = tuple(gate_kinds), gate_hidden, gate_kernel
        self.tau, self.grouping = float(tau), grouping
        self.arch = USDCArch(spec, static=static, dynamic=dynamic, neuron_groups=spec.mlp_hidden // neuron_group_size,
                             keep_init=keep_init, gate_kinds=self.gate_kinds, gate_hidden=gate_hidden,
                             gate_kernel=gate_kernel, gate_init=gate_init, static_mode=static_mode,
                             device=ref.device, dtype=ref.dtype)
        self.arch.train(model.training)
        model.usdc = self.arch
        if not dynamic:
            costs = np.zeros(0)
        elif latency is None:
            costs = np.array([gate_macs(k, spec.embed_dim, spec.num_tokens, hidden=gate_hidden, kernel=gate_kernel,
                                        convention=convention) for k in self.gate_kinds])
        else:
            costs = gate_ms(latency, self.gate_kinds, hidden=gate_hidden, kernel=gate_kernel)
        self.budget = ResourceBudget(spec, target, np.tile(costs.astype(np.float64), (spec.depth, 1)),
                                     gamma=gamma, mode=budget_mode, dual_lr=dual_lr,
                                     static_target=static_target if static else None, convention=convention,
                                     latency=latency)
        # What `uvc.torch.train.fit` logs each epoch: the budget term's state.
        self.solver = self.budget
        self.sampler = GroupSampler(seed)
        self.static_tau, self.anneal_steps = (float(static_tau[0]), float(static_tau[1])), anneal_steps
        self.step_count = 0
        self._anneal()
        self._keep = self._scale = None
        self._gates: list[torch.Tensor | None] = [None] * spec.depth
        self._rates: list[torch.Tensor | None] = [None] * spec.depth
        self._partition = None
        self._handles = []
        for l, block in enumerate(model.blocks):
            self._handles += [
                block.register_forward_pre_hook(self._block_hook(l)),
                block.attn.proj.register_forward_pre_hook(self._scale_input(l, "heads")),
                block.mlp.fc2.register_forward_pre_hook(self._scale_input(l, "neurons")),
                block.ls1.register_forward_hook(self._scale_branch(l, 0)),
                block.ls2.register_forward_hook(self._scale_branch(l, 1)),
            ]

    # ---- forward hooks ----

    def _block_hook(self, l: int):
        def hook(module, args):
            x = args[0]
            if l == 0:
                self._keep = self.arch.keep_probs()
                sampled = self.static and self.arch.static_mode == "sample" and module.training
                noise = torch.from_numpy(self.sampler.noise(self.arch.static_count)).to(x.device) if sampled else None
                self._scale = self.arch.static_scales(noise, self.tau)
                if self.dynamic and module.training:
                    p = self.sampler.sample(x.shape[0], 2 * self.spec.depth, self.grouping)
                    self._partition = tuple(torch.from_numpy(a).to(x.device) for a in (p.groups, p.sizes, p.noise))
            if not self.dynamic:
                return None
            logits = self.arch.gates[l](x)
            if module.training:
                groups, sizes, noise = self._partition
                gates, probs = group_gates(logits, groups, sizes, noise[:, 2 * l:2 * l + 2], tau=self.tau)
            else:
                pooled = logits.mean(dim=0, keepdim=True)
                gates = (pooled > 0).to(logits.dtype).expand_as(logits)
                probs = torch.sigmoid(pooled).expand_as(logits)
            self._gates[l], self._rates[l] = gates, probs.mean(dim=0)
            return None
        return hook

    def _scale_input(self, l: int, kind: str):
        spec = self.spec

        def hook(module, args):
            if not self.static:
                return None
            heads, neurons, _ = self._scale
            if kind == "heads":
                scale = heads[l].repeat_interleave(spec.v_head_dim)
            else:
                scale = neurons[l].repeat_interleave(self.neuron_group_size)
            return (args[0] * scale.to(args[0].dtype),) + tuple(args[1:])
        return hook

    def _scale_branch(self, l: int, part: int):
        def hook(module, args, output):
            scale = self._scale[2][l, part]
            if self.dynamic:
                scale = scale * self._gates[l][:, part, None, None]
            return output * scale.to(output.dtype)
        return hook

    # ---- per-step API ----

    def resource_loss(self) -> torch.Tensor:
        """The budget term of the last forward pass (a scalar on the model's device)."""
        if self._keep is None:
            raise RuntimeError("USDCSearch.resource_loss: run a forward pass first")
        heads, neurons, parts = self._keep
        if self.dynamic:
            rates = torch.stack(self._rates)
            gate_probs = torch.stack([g.probs() for g in self.arch.gates])
        else:
            rates, gate_probs = parts.new_ones(self.spec.depth, 2), parts.new_zeros(self.spec.depth, 0)
        return self.budget.loss(heads, neurons, parts, rates, gate_probs)

    def step(self) -> dict:
        """After every optimizer step: the budget's dual step (primal-dual mode), τ_s's next value."""
        self.budget.step()
        self.step_count += 1
        self._anneal()
        return {}

    def _anneal(self) -> None:
        start, end = self.static_tau
        t = 0.0 if self.anneal_steps is None else min(self.step_count / self.anneal_steps, 1.0)
        self.arch.static_tau = start * (end / start) ** t

    def stats(self) -> dict:
        """Budget state, kept fractions and the gate option each layer would take."""
        out = dict(self.budget.stats())
        if self.static:
            heads, neurons, parts = self.arch.kept()
            out.update(kept_heads=heads.sum(1).tolist(), kept_neurons=(neurons.sum(1) * self.neuron_group_size).tolist(),
                       kept_parts=parts.astype(int).tolist())
        if self.dynamic:
            out["gate_choice"] = [self.gate_kinds[g.best()] for g in self.arch.gates]
        return out

    def state_dict(self) -> dict:
        """Sampler, budget and step count (the parameters are in the model's state dict)."""
        return {"sampler": self.sampler.state_dict(), "budget": self.budget.state_dict(), "step_count": self.step_count}

    def load_state_dict(self, d: dict) -> None:
        self.sampler.load_state_dict(d["sampler"])
        self.budget.load_state_dict(d["budget"])
        self.step_count = int(d["step_count"])
        self._anneal()

    # ---- the end of the search ----

    def plan(self) -> ArchPlan:
        """The static architecture: heads, neuron groups and parts with a₀ ≥ a₁ (all value dims,
        dense tokens). A part left with no head or neuron is pruned too."""
        spec = self.spec
        if not self.static:
            return ArchPlan.dense(spec)
        heads, neurons, parts = self.arch.kept()
        v = tuple(range(spec.v_head_dim))
        layers = []
        for l in range(spec.depth):
            kept_heads = tuple(np.flatnonzero(heads[l]).tolist())
            kept_neurons = tuple(int(k) * self.neuron_group_size + i for k in np.flatnonzero(neurons[l])
                                 for i in range(self.neuron_group_size))
            attn, mlp = bool(parts[l, 0]) and bool(kept_heads), bool(parts[l, 1]) and bool(kept_neurons)
            layers.append(LayerPlan(heads=kept_heads if attn else (), v_index=(v,) * len(kept_heads) if attn else (),
                                    neurons=kept_neurons if mlp else (), tokens=spec.num_tokens, attn=attn, mlp=mlp))
        return ArchPlan(spec, tuple(layers))

    @torch.no_grad()
    def slim(self) -> SlimViT:
        """The physically pruned model with the kept structures' eval-mode scales folded into
        proj / fc2 (weights and biases): a₀ in softmax mode, 1 in sample mode. It computes the
        search model's eval-mode branches without the gates."""
        plan = self.plan()
        slim = SlimViT.from_timm(self.model, plan)
        heads, neurons, parts = (t.detach() for t in self.arch.static_scales(None, self.tau))
        for j, l in enumerate(slim.block_index):
            layer, block = plan.layers[l], slim.blocks[j]
            if block.attn is not None:
                cols = heads[l, list(layer.heads)].repeat_interleave(layer.v_dim) * parts[l, 0]
                block.attn.proj.weight.mul_(cols.to(block.attn.proj.weight.dtype))
                if block.attn.proj.bias is not None:
                    block.attn.proj.bias.mul_(parts[l, 0])
            if block.mlp is not None:
                group = torch.tensor(layer.neurons, device=neurons.device) // self.neuron_group_size
                cols = neurons[l, group] * parts[l, 1]
                block.mlp.fc2.weight.mul_(cols.to(block.mlp.fc2.weight.dtype))
                if block.mlp.fc2.bias is not None:
                    block.mlp.fc2.bias.mul_(parts[l, 1])
        return slim

    def export(self) -> nn.Module:
        """Stage 2's model: a `DynamicViT` (the `slim` model with each kept block's best gate
        network, weights copied, its sampler continuing this search's stream) when gates were
        searched, else the `slim` model. Same mode (train/eval) as the searched model."""
        from .dynamic import DynamicViT
        slim = self.slim()
        if not self.dynamic:
            return slim
        gates = [copy.deepcopy(self.arch.gates[l].options[self.arch.gates[l].best()]) for l in slim.block_index]
        dyn = DynamicViT.from_parts(slim, gates, tau=self.tau, grouping=self.grouping)
        dyn.sampler.load_state_dict(self.sampler.state_dict())
        return dyn.train(self.model.training)

    def remove(self) -> None:
        """Removes the hooks and ``model.usdc``; the model runs as plain timm again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        del self.model.usdc
