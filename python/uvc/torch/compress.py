"""UVC stage 1 on a live timm ViT: masks, block gates and token drops in the forward pass, one
solver step per optimizer step, export of the physically smaller model.

    comp = Compressor(model, budget=0.5, steps_per_epoch=len(loader), optimizer=opt)
    for x, y in loader:
        loss = criterion(x, model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        comp.step()
    slim = comp.export()

The forward pass is changed by hooks: the input of every ``attn.proj`` is multiplied by its
head × value-dim keep mask, the input of every ``mlp.fc2`` by its neuron mask, and the outputs
of ``ls1`` / ``ls2`` (the MHSA and MLP branches) by this step's block-part gates. With
``qk_keep`` < 1 the queries of every ``attn.qkv`` output are multiplied by a fixed mask that
keeps each head's ``qk_dim`` dims of highest |q row|·|k row| weight norm (chosen once, at
construction): a removed dim adds q_j·k_j = 0 to the logits, as in the exported model. With
``prune_tokens=True`` a hook on every ``attn.qkv`` also computes the attention that ranks the
tokens (`uvc.torch.slim.ranking_attention` over the kept heads: the class token's row
softmax(q_cls·Kᵀ/√d), or without a class token every row averaged over the queries), and each
block that drops tokens under the solver's schedule runs a forward of our own: timm's, with `uvc.torch.slim.reduce_tokens`
between the MHSA and the MLP residuals, exactly what the exported `SlimBlock` does. Masks, gates
and token scores live on the model's device; the host sees one small transfer per step.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..solver import Solver, highest
from .importance import Importance, make_importance
from .introspect import check_supported, spec_from_model
from .slim import SlimViT, ranking_attention, reduce_tokens

__all__ = ["Compressor"]


class Compressor:
    """Learns which heads, value dims, MLP neurons and block parts of ``model`` to keep
    under a MACs budget (UVC, REFERENCE.md §2–4).

    ``model``: a timm ``VisionTransformer`` / ``VisionTransformerDistilled`` (changed in
    place: hooks are added, proximal shrink rescales weights). ``budget``: fraction of the
    dense MACs to keep (or ``budget_macs``: absolute MACs; with ``latency=`` a
    `uvc.LatencyTable`, a fraction of the table's dense latency, see `uvc.Solver`). ``steps_per_epoch``: optimizer
    steps per epoch, to turn steps into the fractional epochs the solver's schedules use.
    ``optimizer``: where the current learning rate η_W (proximal shrink) is read; or pass
    ``lr=`` to `step`. ``importance``: what the solver scores each value dim and neuron by, a
    name of `uvc.torch.importance.CRITERIA` ("proj": the squared norm of its proj / fc2 input
    column, as the original; "group": of all its coupled weights; "taylor", the default:
    |Σ w·∂L/∂w| over them, a moving average over steps) or an `uvc.torch.importance.Importance`
    object. Other keywords
    go to `uvc.Solver`.

    With ``prune_tokens=True`` the number of tokens each block takes is learned too: blocks
    that drop tokens under `uvc.Solver.token_keep` do so in training and eval alike (the hard
    forward the export runs; gradients reach the kept and the fused tokens, and the attention
    that ranks and weights them), and every training forward records each block's ranking
    attention (the class token's, or in a model without one the attention each token
    receives), sorted per image and averaged over the batch, as the solver's token scores.
    """

    def __init__(self, model: nn.Module, budget: float = 0.5, *, steps_per_epoch: int,
                 optimizer: torch.optim.Optimizer | None = None, importance: str | Importance = "taylor",
                 **solver_kwargs):
        check_supported(model)
        self.importance = make_importance(importance)
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"Compressor: steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
        self.model = model
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.spec = spec_from_model(model)
        self.solver = Solver(self.spec, budget=budget, **solver_kwargs)
        self.step_count = 0
        s = self.spec
        device = next(model.parameters()).device
        self._handles = []
        # Query/key dims: the width is the core's (`Solver.plan`; only asked when narrowing, as a plan
        # under a latency table may move gates), the dims the highest |q|·|k| rows.
        self.qk_dim, self._qk_scores = s.qk_head_dim, None
        if self.solver.hyper["qk_keep"] < 1:
            self.qk_dim = next((l.qk_dim for l in self.solver.plan().layers if l.attn), s.qk_head_dim)
        if self.qk_dim < s.qk_head_dim:
            self._qk_scores = self._qk_weight_scores()
            # Over the whole qkv output: the kept queries 1, the rest 0, keys and values 1.
            self._q_mask = torch.ones(s.depth, model.blocks[0].attn.qkv.out_features, device=device)
            self._sync_q_mask()
            self._handles += [block.attn.qkv.register_forward_hook(self._query_masker(l))
                              for l, block in enumerate(model.blocks)]
        self._attn_mask = torch.ones(s.depth, s.num_heads * s.v_head_dim, device=device)
        self._mlp_mask = torch.ones(s.depth, s.mlp_hidden, device=device)
        self._eval_gates = torch.ones(s.depth, 2, device=device)
        self._gates = self._new_gates(self.solver.sample_gates(self.epoch))
        for l, block in enumerate(model.blocks):
            self._handles += [
                block.attn.proj.register_forward_pre_hook(self._masker(self._attn_mask, l)),
                block.mlp.fc2.register_forward_pre_hook(self._masker(self._mlp_mask, l)),
                block.ls1.register_forward_hook(self._gater(block, l, 0)),
                block.ls2.register_forward_hook(self._gater(block, l, 1)),
            ]
        self.prune_tokens = self.solver.hyper["prune_tokens"]
        if self.prune_tokens:
            self._head_mask = torch.ones(s.depth, s.num_heads, device=device)
            # Row l: block l's ranking attention of the last training forward (see `uvc.Solver.step`).
            self._token_scores = torch.zeros(s.depth, s.num_tokens, device=device)
            # Per block: tokens it keeps when it drops some (else None), and the ranking attention
            # its forward hands from the qkv hook to the drop.
            self._tokens_out: list[int | None] = [None] * s.depth
            self._ranking: list[torch.Tensor | None] = [None] * s.depth
            self._handles += [block.attn.qkv.register_forward_hook(self._ranking_hook(block, l))
                              for l, block in enumerate(model.blocks)]
            self._sync_tokens()

    @property
    def epoch(self) -> float:
        """Fractional epoch of the next optimizer step."""
        return self.step_count / self.steps_per_epoch

    @torch.no_grad()
    def _qk_weight_scores(self) -> np.ndarray:
        """(depth, heads, qk_head_dim): the norm of query row j times that of key row j of each
        head (weights and bias), the scale of its logit term q_j·k_j."""
        s = self.spec
        out = []
        for block in self.model.blocks:
            w = block.attn.qkv.weight.float()
            if block.attn.qkv.bias is not None:
                w = torch.cat([w, block.attn.qkv.bias.float()[:, None]], dim=1)
            width = s.num_heads * s.qk_head_dim
            q, k = w[:width].norm(dim=1), w[width:2 * width].norm(dim=1)
            out.append((q * k).reshape(s.num_heads, s.qk_head_dim).double().cpu().numpy())
        return np.stack(out)

    @torch.no_grad()
    def _sync_q_mask(self) -> None:
        """The query part of the qkv mask: the dims every head keeps, `uvc.solver.highest` of
        ``_qk_scores`` as `Solver.plan` exports them (a head's choice does not depend on which
        heads stay)."""
        s = self.spec
        queries = np.zeros((s.depth, s.num_heads, s.qk_head_dim))
        np.put_along_axis(queries, highest(self._qk_scores, self.qk_dim), 1.0, axis=2)
        self._q_mask[:, :queries[0].size] = torch.from_numpy(queries.reshape(s.depth, -1)).to(self._q_mask)

    def _query_masker(self, l: int):
        def hook(module, args, qkv):
            return qkv * self._q_mask[l].to(qkv.dtype)
        return hook

    @staticmethod
    def _masker(mask: torch.Tensor, l: int):
        def hook(module, args):
            return (args[0] * mask[l],) + tuple(args[1:])
        return hook

    def _gater(self, block: nn.Module, l: int, part: int):
        def hook(module, args, output):
            gates = self._gates if block.training else self._eval_gates
            return output * gates[l, part].to(output.dtype)
        return hook

    def _ranking_hook(self, block: nn.Module, l: int):
        """Computes block ``l``'s ranking attention from its qkv output: (B, N) probabilities,
        `ranking_attention` over the kept heads, as `SlimAttention` computes it."""
        attn = block.attn
        h, hd, width, prefix = attn.num_heads, attn.head_dim, attn.attn_dim, self.spec.prefix_tokens
        class_token = self.spec.class_token

        def hook(module, args, qkv):
            drops = self._tokens_out[l] is not None
            if not (drops or block.training):
                return
            b, n, _ = qkv.shape
            # Only a drop backpropagates through the ranking weights; scores alone need no graph.
            with torch.set_grad_enabled(drops and torch.is_grad_enabled()):
                queries = 1 if class_token else n
                q = attn.q_norm(qkv[:, :queries, :width].reshape(b, queries, h, hd).transpose(1, 2))
                k = attn.k_norm(qkv[:, :, width:2 * width].reshape(b, n, h, hd).transpose(1, 2))
                cls = ranking_attention(q, k, attn.scale, class_token=class_token, head_weights=self._head_mask[l])
            if drops:
                self._ranking[l] = cls
            if block.training:
                with torch.no_grad():
                    row = self._token_scores[l]
                    row[:prefix] = cls[:, :prefix].mean(dim=0)
                    # Per image highest first, then the batch mean: rank j's attention.
                    row[prefix:n] = cls[:, prefix:].sort(dim=1, descending=True).values.mean(dim=0)
                    row[n:] = 0
        return hook

    def _dropping_forward(self, block: nn.Module, l: int, tokens_out: int):
        """timm's Block.forward with the token drop of `SlimBlock` after the MHSA residual."""
        prefix = self.spec.prefix_tokens

        def forward(x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
            x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
            cls, self._ranking[l] = self._ranking[l], None
            x = reduce_tokens(x, cls, prefix, tokens_out)
            return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return forward

    def _sync_tokens(self) -> None:
        """Installs our forward on the blocks that drop tokens under the solver's schedule and
        gives the others back timm's."""
        keep = self.solver.token_keep().tolist()
        for l, block in enumerate(self.model.blocks):
            block.__dict__.pop("forward", None)
            self._tokens_out[l] = keep[l + 1] if l + 1 < len(keep) and keep[l + 1] < keep[l] else None
            if self._tokens_out[l] is not None:
                block.forward = self._dropping_forward(block, l, self._tokens_out[l])

    def _new_gates(self, values: np.ndarray) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self._attn_mask.device, requires_grad=True)

    @torch.no_grad()
    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The importance of every value dim (depth, heads × v dim) and MLP neuron (depth,
        neurons) by ``self.importance``, float32 on the model's device."""
        return self.importance.scores(self.model)

    def step(self, lr: float | None = None) -> dict:
        """One solver step; call it after every ``optimizer.step()``. Returns `Solver.stats()`
        every ``steps_per_epoch`` steps and an empty dict otherwise."""
        if lr is None:
            if self.optimizer is None:
                raise ValueError("Compressor.step: pass lr= or give the Compressor an optimizer")
            lr = float(self.optimizer.param_groups[0]["lr"])
        s = self.spec
        # The last backward's gradients are still in .grad (stateful criteria take them in).
        self.importance.accumulate(self.model)
        grad = self._gates.grad if self._gates.grad is not None else torch.zeros_like(self._gates)
        proj, fc2 = self.scores()
        per_batch = [grad.reshape(-1).float()] + ([self._token_scores.reshape(-1).float()] if self.prune_tokens else [])
        packed = torch.cat(per_batch + [proj.reshape(-1), fc2.reshape(-1)])
        n_b = sum(t.numel() for t in per_batch)
        if dist.is_available() and dist.is_initialized():
            # Weights are already equal on every rank; gate gradients and token scores are averaged.
            dist.all_reduce(packed[:n_b])
            packed[:n_b] /= dist.get_world_size()
        host = packed.double().cpu().numpy()
        n_g, n_p = grad.numel(), proj.numel()
        gate_grad = host[:n_g].reshape(s.depth, 2)
        token_scores = host[n_g:n_b].reshape(s.depth, s.num_tokens) if self.prune_tokens else None
        dims = host[n_b:n_b + n_p].reshape(s.depth, s.num_heads, s.v_head_dim)
        neurons = host[n_b + n_p:].reshape(s.depth, s.mlp_hidden)
        res = self.solver.step(dims.sum(-1), dims, neurons, gate_grad, lr=lr, epoch=self.epoch,
                               token_scores=token_scores)
        self.step_count += 1
        self._apply(res.head_factor[:, :, None] * res.dim_factor, res.neuron_factor)
        self._sync_masks()
        self._gates = self._new_gates(self.solver.sample_gates(self.epoch))
        return self.solver.stats() if self.step_count % self.steps_per_epoch == 0 else {}

    @torch.no_grad()
    def _apply(self, proj_factor: np.ndarray, fc2_factor: np.ndarray) -> None:
        """Proximal shrink: scale the input columns of proj / fc2 by the solver's factors."""
        device = self._attn_mask.device
        pf = torch.from_numpy(proj_factor.reshape(self.spec.depth, -1)).to(device)
        ff = torch.from_numpy(fc2_factor).to(device)
        for l, block in enumerate(self.model.blocks):
            w = block.attn.proj.weight
            w.mul_(pf[l].to(w.dtype))
            w = block.mlp.fc2.weight
            w.mul_(ff[l].to(w.dtype))

    @torch.no_grad()
    def _sync_masks(self) -> None:
        head, dim, neuron = self.solver.masks()
        self._attn_mask.copy_(torch.from_numpy((head[:, :, None] * dim).reshape(self.spec.depth, -1)))
        self._mlp_mask.copy_(torch.from_numpy(neuron))
        self._eval_gates.copy_(torch.from_numpy(self.solver.gate_decisions().astype(np.float32)))
        if self.prune_tokens:
            self._head_mask.copy_(torch.from_numpy(head))
            self._sync_tokens()

    def export(self, round_to: int = 1, *, fit: bool = False, weights: nn.Module | None = None) -> SlimViT:
        """The physically smaller model for the current plan (`Solver.plan`'s ``round_to`` and
        ``fit``), in eval mode. Before any fine-tuning it reproduces this model's eval-mode
        logits, unless rounding or ``fit`` moved a width.

        Args:
            weights: the timm model of this one's shape whose kept weights are copied (default:
                this model, as the search left it; a copy of the dense model taken before the
                search exports the plan on the dense weights).
        """
        plan = self.solver.plan(round_to=round_to, fit=fit, qk_scores=self._qk_scores)
        return SlimViT.from_timm(self.model if weights is None else weights, plan).eval()

    def remove(self) -> None:
        """Removes the hooks and our block forwards; the model runs dense again (with its
        shrunk weights)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for block in self.model.blocks:
            block.__dict__.pop("forward", None)

    def state_dict(self) -> dict:
        """Solver state, step count, the gate sample of the next step and the importance's state
        (for exact resume)."""
        state = {"solver": self.solver.state_dict(), "step_count": self.step_count,
                 "gates": self._gates.detach().cpu().numpy().tolist(), "importance": self.importance.state_dict()}
        if self._qk_scores is not None:  # chosen on the weights at the start: resumed weights differ
            state["qk_scores"] = self._qk_scores.tolist()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "importance" in state:  # absent in states written before importance was pluggable
            self.importance.load_state_dict(state["importance"])
        self.solver.load_state_dict(state["solver"])
        self.step_count = int(state["step_count"])
        if self._qk_scores is not None:
            if "qk_scores" not in state:
                raise ValueError("Compressor.load_state_dict: the state has no qk_scores; it was saved by a "
                                 "search that kept every query/key dim (qk_keep 1), this one has qk_keep < 1")
            self._qk_scores = np.asarray(state["qk_scores"], dtype=np.float64)
            self._sync_q_mask()
        self._sync_masks()
        self._gates = self._new_gates(np.asarray(state["gates"], dtype=np.float64))
