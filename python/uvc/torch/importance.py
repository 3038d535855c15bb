"""How important each value dim and MLP neuron of a timm ViT is to the UVC search: one interface,
several criteria (as Torch-Pruning's ``importance``). `uvc.torch.Compressor` takes one by name
(``importance="taylor"``, `CRITERIA`) or as an object with the `Importance` interface.

A group is what removing one unit removes. Value dim j of head h in block l (index
h·v_head_dim + j): its qkv value row (weight row and bias entry; `introspect.value_rows`) and
proj's input column h·v_head_dim + j. Neuron i: its fc1 row (two rows, gate and value, in a
gated MLP; `introspect.unit_rows`), their bias entries and fc2's input column i.

* ``"proj"`` (the original UVC's): Σ_o proj.W[o, c]², Σ_o fc2.W[o, i]²: the squared norm of the
  column the Compressor's masks and proximal shrink act on. Unit: weight².
* ``"group"``: the squared norm of the whole group, Σ_{w ∈ group} w². Unit: weight².
* ``"taylor"``: |Σ_{w ∈ group} w·∂L/∂w|, the first-order change of the loss L when the group is
  zeroed, from the gradients in ``.grad`` when `Importance.accumulate` is called, as an
  exponential moving average over steps (`Taylor`). Unit: loss. The default: on the quality
  benchmark (README) it beat ``"proj"`` by 0.93 points at 0.3 of the MACs and was level at 0.5.

Scores are reduced on the model's device, float32: ``dims`` (depth, heads·v_head_dim) and
``neurons`` (depth, mlp_hidden); the Compressor moves them to the host in its one transfer.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..settings import COMPRESS_IMPORTANCE as CRITERIA
from .introspect import unit_rows, value_rows

__all__ = ["CRITERIA", "Importance", "Proj", "Group", "Taylor", "make_importance"]

_METHODS = ("scores", "accumulate", "state_dict", "load_state_dict")


def _blocks(model_or_blocks) -> Iterable[nn.Module]:
    return model_or_blocks.blocks if hasattr(model_or_blocks, "blocks") else model_or_blocks


def _group_sums(model_or_blocks, term) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block, Σ over each group's weights of ``term(parameter)`` (an elementwise float32
    tensor of the parameter's shape, or None: the parameter adds nothing): (dims, neurons)."""
    dims, neurons = [], []

    def add(total: torch.Tensor, p: torch.Tensor | None, part: slice) -> None:
        # Rows ``part`` of a weight (summed over its inputs) or entries ``part`` of a bias.
        t = term(p) if p is not None else None
        if t is not None:
            total += t[part].sum(1) if t.dim() == 2 else t[part]

    for block in _blocks(model_or_blocks):
        attn, mlp = block.attn, block.mlp
        proj, fc2 = term(attn.proj.weight), term(mlp.fc2.weight)
        # A column is the unit's fan-out; zeros when it adds nothing (no gradient).
        d = proj.sum(0) if proj is not None else attn.proj.weight.new_zeros(attn.proj.in_features, dtype=torch.float32)
        n = fc2.sum(0) if fc2 is not None else mlp.fc2.weight.new_zeros(mlp.fc2.in_features, dtype=torch.float32)
        v = value_rows(attn)
        add(d, attn.qkv.weight, v)
        add(d, attn.qkv.bias, v)
        for name, offset in unit_rows(mlp):
            fc1, part = getattr(mlp, name), slice(offset, offset + mlp.fc2.in_features)
            add(n, fc1.weight, part)
            add(n, fc1.bias, part)
        dims.append(d)
        neurons.append(n)
    return torch.stack(dims), torch.stack(neurons)


def _square(p: torch.Tensor) -> torch.Tensor:
    return p.detach().float().pow(2)


class Importance:
    """The interface. ``scores(model)`` → (dims, neurons) float32 tensors on the model's device;
    ``accumulate(model)`` is called by the Compressor at the start of every ``step()`` (after the
    user's backward and optimizer step: the last backward's gradients are still in ``.grad``);
    ``state_dict()`` / ``load_state_dict()`` carry what a resumed run needs. The defaults here are
    those of a criterion without state; subclass it, or pass any object with these four methods.
    """

    name = "custom"

    def scores(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            model: the timm ViT (or the sequence of its blocks).

        Returns: ``dims`` (depth, heads·v_head_dim), ``neurons`` (depth, mlp_hidden)."""
        raise NotImplementedError

    def accumulate(self, model: nn.Module) -> None:
        """Takes in this step's gradients; nothing for a criterion without state."""

    def state_dict(self) -> dict:
        return {"name": self.name}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name", self.name) != self.name:
            raise ValueError(f"importance: the state is of the {state['name']!r} criterion, this run uses "
                             f"{self.name!r}")


class Proj(Importance):
    """``"proj"``: squared L2 norm of each attn.proj / mlp.fc2 input column (weight²)."""

    name = "proj"

    @torch.no_grad()
    def scores(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = list(_blocks(model))
        proj = torch.stack([b.attn.proj.weight.float().pow(2).sum(0) for b in blocks])
        fc2 = torch.stack([b.mlp.fc2.weight.float().pow(2).sum(0) for b in blocks])
        return proj, fc2


class Group(Importance):
    """``"group"``: squared L2 norm of all the weights coupled to each unit (weight²): qkv's value
    row and bias entry plus proj's column for a value dim; fc1's row(s) and bias entries plus
    fc2's column for a neuron."""

    name = "group"

    @torch.no_grad()
    def scores(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return _group_sums(model, _square)


class Taylor(Importance):
    """``"taylor"``: first-order Taylor importance, t = |Σ_{w ∈ group} w·∂L/∂w| (loss units), the
    loss change to first order when the group is zeroed, over the same coupled weights as
    ``"group"``. ``w`` are the weights when `accumulate` runs (after the optimizer step), ``∂L/∂w``
    the gradients of the last backward. A parameter without ``.grad`` adds nothing; a step on
    which no coupled parameter has one is not counted.

    The score is a moving average on the device: s₁ = t₁, s_k = decay·s_{k−1} + (1 − decay)·t_k.
    Before any gradient has been seen it is the ``"group"`` norm (weight²), so the first step
    is well defined.

    Args:
        decay: weight of the past in the moving average, in [0, 1); 0 keeps the last step only.
    """

    name = "taylor"

    def __init__(self, decay: float = 0.9) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"Taylor: decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self._avg: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def accumulate(self, model: nn.Module) -> None:
        seen = False

        def term(p: torch.Tensor):
            nonlocal seen
            if p.grad is None:
                return None
            seen = True
            return p.detach().float() * p.grad.float()

        dims, neurons = _group_sums(model, term)
        if not seen:
            return
        now = (dims.abs(), neurons.abs())
        if self._avg is None:
            self._avg = now
        else:
            self._avg = tuple(a.to(n.device).mul_(self.decay).add_(n, alpha=1.0 - self.decay)
                              for a, n in zip(self._avg, now))

    @torch.no_grad()
    def scores(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        if self._avg is None:
            return _group_sums(model, _square)
        device = next(iter(_blocks(model))).mlp.fc2.weight.device
        self._avg = tuple(a.to(device) for a in self._avg)
        return self._avg[0].clone(), self._avg[1].clone()

    def state_dict(self) -> dict:
        # Lists, as the Compressor's own state: float32 → Python float → float32 is exact.
        avg = None if self._avg is None else [a.cpu().tolist() for a in self._avg]
        return {"name": self.name, "decay": self.decay, "average": avg}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        avg = state["average"]
        self._avg = None if avg is None else tuple(torch.tensor(a, dtype=torch.float32) for a in avg)


_BY_NAME = {"proj": Proj, "group": Group, "taylor": Taylor}
assert tuple(_BY_NAME) == CRITERIA


def make_importance(importance: str | Importance) -> Importance:
    """The criterion to score a search by.

    Args:
        importance: a name of `CRITERIA` (the criterion with its defaults, e.g. ``Taylor(decay=0.9)``)
            or an object with the four `Importance` methods, returned as it is.

    Raises: ValueError for an unknown name, TypeError for an object without the methods."""
    if isinstance(importance, str):
        if importance not in _BY_NAME:
            raise ValueError(f"importance must be one of {', '.join(CRITERIA)} or an Importance object; "
                             f"got {importance!r}")
        return _BY_NAME[importance]()
    missing = [m for m in _METHODS if not callable(getattr(importance, m, None))]
    if missing:
        raise TypeError(f"importance: expected a name ({', '.join(CRITERIA)}) or an object with "
                        f"{', '.join(_METHODS)}; {type(importance).__name__} lacks {', '.join(missing)}")
    return importance
