"""`ArchPlan`: a discrete pruned architecture inside a `ViTSpec`, saved as JSON."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Sequence

import numpy as np

from .spec import ViTSpec

__all__ = ["LayerPlan", "ArchPlan", "random_plan", "PLAN_FORMAT"]

PLAN_FORMAT = "uvc.plan/1"


def _index_tuple(values: Iterable[int], what: str, upper: int) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if list(out) != sorted(set(out)):
        raise ValueError(f"{what}: indices must be strictly increasing, got {list(out)}")
    if out and (out[0] < 0 or out[-1] >= upper):
        raise ValueError(f"{what}: indices must lie in 0..{upper - 1}, got {list(out)}")
    return out


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """What one block keeps.

    ``heads``: kept head indices. ``v_index``: for each kept head, its kept value dims
    (the same number for every head of a layer, so the layer stays one rectangular
    attention call). ``neurons``: kept MLP hidden neurons. ``attn`` / ``mlp``: whether the
    MHSA / MLP part runs at all. ``tokens``: tokens entering the block, prefix included.

    Token schedule (checked by `ArchPlan`): layer 0 takes ``spec.num_tokens``; when layer
    l + 1 takes fewer tokens than layer l, block l drops them after its MHSA (which must
    run): it keeps the prefix tokens and the ``tokens[l+1] − prefix − 1`` ≥ 1 patch tokens
    the class token attends to most, and fuses the rest into one token. The last block
    never drops.
    """

    heads: tuple[int, ...]
    v_index: tuple[tuple[int, ...], ...]
    neurons: tuple[int, ...]
    tokens: int
    attn: bool = True
    mlp: bool = True

    @property
    def v_dim(self) -> int:
        return len(self.v_index[0]) if self.v_index else 0

    def to_dict(self) -> dict:
        return {"heads": list(self.heads), "v_index": [list(v) for v in self.v_index],
                "neurons": list(self.neurons), "tokens": self.tokens, "attn": self.attn, "mlp": self.mlp}


@dataclasses.dataclass(frozen=True)
class ArchPlan:
    """A pruned architecture: one `LayerPlan` per block of ``spec``."""

    spec: ViTSpec
    layers: tuple[LayerPlan, ...]

    def __post_init__(self) -> None:
        spec = self.spec
        if not isinstance(spec, ViTSpec):
            raise TypeError(f"ArchPlan: spec must be a ViTSpec, got {type(spec).__name__}")
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if len(layers) != spec.depth:
            raise ValueError(f"ArchPlan: layers has {len(layers)} entries, the spec has depth {spec.depth}")
        for i, layer in enumerate(layers):
            if not isinstance(layer, LayerPlan):
                raise TypeError(f"ArchPlan: layers[{i}] must be a LayerPlan, got {type(layer).__name__}")
            _index_tuple(layer.heads, f"ArchPlan: layers[{i}].heads", spec.num_heads)
            _index_tuple(layer.neurons, f"ArchPlan: layers[{i}].neurons", spec.mlp_hidden)
            if len(layer.v_index) != len(layer.heads):
                raise ValueError(f"ArchPlan: layers[{i}].v_index has {len(layer.v_index)} entries, "
                                 f"expected one per kept head ({len(layer.heads)})")
            widths = {len(v) for v in layer.v_index}
            if len(widths) > 1:
                raise ValueError(f"ArchPlan: layers[{i}].v_index keeps {sorted(widths)} value dims in "
                                 "different heads; every head of a layer keeps the same number")
            for h, v in enumerate(layer.v_index):
                _index_tuple(v, f"ArchPlan: layers[{i}].v_index[{h}]", spec.v_head_dim)
        # Counts, ranges and token order are checked by the core.
        from . import cost
        cost.check_plan(self)

    @classmethod
    def dense(cls, spec: ViTSpec) -> "ArchPlan":
        """Everything kept."""
        v = tuple(range(spec.v_head_dim))
        layer = LayerPlan(heads=tuple(range(spec.num_heads)), v_index=(v,) * spec.num_heads,
                          neurons=tuple(range(spec.mlp_hidden)), tokens=spec.num_tokens)
        return cls(spec, (layer,) * spec.depth)

    @property
    def counts(self) -> np.ndarray:
        """The (depth, 6) int64 array the core reads: heads, v_dim, neurons, attn, mlp, tokens."""
        return np.array([[len(l.heads), l.v_dim, len(l.neurons), int(l.attn), int(l.mlp), l.tokens]
                         for l in self.layers], dtype=np.int64).reshape(self.spec.depth, 6)

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "spec": self.spec.to_dict(), "layers": [l.to_dict() for l in self.layers]}

    @classmethod
    def from_dict(cls, d: dict, spec: ViTSpec | None = None) -> "ArchPlan":
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise ValueError(f"ArchPlan.from_dict: expected a dict with format {PLAN_FORMAT!r}")
        spec = spec if spec is not None else ViTSpec.from_dict(d["spec"])
        layers = []
        for i, l in enumerate(d["layers"]):
            try:
                layers.append(LayerPlan(heads=tuple(l["heads"]), v_index=tuple(tuple(v) for v in l["v_index"]),
                                        neurons=tuple(l["neurons"]), tokens=int(l["tokens"]),
                                        attn=bool(l.get("attn", True)), mlp=bool(l.get("mlp", True))))
            except KeyError as e:
                raise ValueError(f"ArchPlan.from_dict: layers[{i}] lacks key {e.args[0]!r}") from None
        return cls(spec, tuple(layers))

    def save(self, path: str | os.PathLike) -> None:
        """Writes the plan as JSON (atomically: a crash never leaves half a file)."""
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ArchPlan":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def random_plan(spec: ViTSpec, rng: np.random.Generator, *, skip_prob: float = 0.15,
                tokens: bool = True, drop_prob: float = 0.3) -> ArchPlan:
    """A random valid plan (for tests and benchmarks): random kept heads, value dims,
    neurons, skipped block parts and, if ``tokens``, a valid token schedule in which each
    block whose MHSA runs drops tokens with probability ``drop_prob`` (when it can)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError("random_plan: rng must be a numpy.random.Generator")
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"random_plan: drop_prob must lie in [0, 1], got {drop_prob!r}")
    layers = []
    n_tok = spec.num_tokens
    for i in range(spec.depth):
        attn = bool(rng.random() >= skip_prob)
        mlp = bool(rng.random() >= skip_prob)
        n_heads = int(rng.integers(1, spec.num_heads + 1))
        heads = tuple(sorted(rng.choice(spec.num_heads, n_heads, replace=False).tolist()))
        v_dim = int(rng.integers(1, spec.v_head_dim + 1))
        v_index = tuple(tuple(sorted(rng.choice(spec.v_head_dim, v_dim, replace=False).tolist())) for _ in heads)
        n_neurons = int(rng.integers(1, spec.mlp_hidden + 1))
        neurons = tuple(sorted(rng.choice(spec.mlp_hidden, n_neurons, replace=False).tolist()))
        layers.append(LayerPlan(heads=heads if attn else (), v_index=v_index if attn else (),
                                neurons=neurons if mlp else (), tokens=n_tok, attn=attn, mlp=mlp))
        # A drop keeps the prefix, at least one patch and the fused token: needs prefix + 3 in.
        can_drop = attn and i + 1 < spec.depth and n_tok >= spec.prefix_tokens + 3
        if tokens and can_drop and rng.random() < drop_prob:
            n_tok = int(rng.integers(spec.prefix_tokens + 2, n_tok))
    return ArchPlan(spec, tuple(layers))
