"""`ArchPlan`: a discrete pruned architecture inside a `ViTSpec`, saved as JSON."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from typing import Iterable, Sequence

import numpy as np

from ._core import LAYOUTS
from ._files import read_json
from .spec import ViTSpec

# The core's columns of a plan row, and what each holds.
PLAN_ROW: tuple[str, ...] = tuple(LAYOUTS["plan_row"])
_ROW = {"heads": lambda l: len(l.heads), "qk_dim": lambda l: l.qk_dim, "v_dim": lambda l: l.v_dim,
        "neurons": lambda l: len(l.neurons), "attn": lambda l: int(l.attn), "mlp": lambda l: int(l.mlp),
        "tokens": lambda l: l.tokens}

__all__ = ["LayerPlan", "ArchPlan", "random_plan", "PLAN_FORMAT"]

PLAN_FORMAT = "uvc.plan/2"
# Formats `ArchPlan.from_dict` reads: /1 predates ``qk_index`` (every query/key dim kept).
_READS = ("uvc.plan/1", PLAN_FORMAT)
_LAYER_KEYS = ("heads", "v_index", "neurons", "tokens")


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
    attention call). ``qk_index``: the same for its query/key dims (dim j removes query row
    j and key row j; the softmax keeps the dense scale 1/√qk_head_dim); None, the default,
    keeps all of them (`ArchPlan` writes them out). ``neurons``: kept MLP hidden neurons.
    ``attn`` / ``mlp``: whether the MHSA / MLP part runs at all. ``tokens``: tokens entering the block, prefix included.

    Token schedule (checked by `ArchPlan`): layer 0 takes ``spec.num_tokens``; when layer
    l + 1 takes fewer tokens than layer l, block l drops them after its MHSA (which must
    run): it keeps the prefix tokens and the ``tokens[l+1] − prefix − 1`` ≥ 1 patch tokens
    the class token attends to most (without a class token: that receive the most attention,
    averaged over the queries), and fuses the rest into one token. The last block never drops.
    """

    heads: tuple[int, ...]
    v_index: tuple[tuple[int, ...], ...]
    neurons: tuple[int, ...]
    tokens: int
    attn: bool = True
    mlp: bool = True
    qk_index: tuple[tuple[int, ...], ...] | None = None

    @property
    def v_dim(self) -> int:
        return len(self.v_index[0]) if self.v_index else 0

    @property
    def qk_dim(self) -> int:
        """Kept query/key dims per head (0 without heads)."""
        if self.qk_index is None:
            raise ValueError("LayerPlan.qk_dim: qk_index is None (all dims); an ArchPlan writes the indices out")
        return len(self.qk_index[0]) if self.qk_index else 0

    def to_dict(self) -> dict:
        return {"heads": list(self.heads), "qk_index": [list(q) for q in self.qk_index or ()],
                "v_index": [list(v) for v in self.v_index],
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
        if len(layers) != spec.depth:
            raise ValueError(f"ArchPlan: layers has {len(layers)} entries, the spec has depth {spec.depth}")
        full = tuple(range(spec.qk_head_dim))
        for i, layer in enumerate(layers):
            if not isinstance(layer, LayerPlan):
                raise TypeError(f"ArchPlan: layers[{i}] must be a LayerPlan, got {type(layer).__name__}")
            _index_tuple(layer.heads, f"ArchPlan: layers[{i}].heads", spec.num_heads)
            _index_tuple(layer.neurons, f"ArchPlan: layers[{i}].neurons", spec.mlp_hidden)
            for name, width in (("v_index", spec.v_head_dim), ("qk_index", spec.qk_head_dim)):
                per_head = getattr(layer, name)
                # qk_index None: every query/key dim of every kept head; without heads, nothing to keep.
                if per_head is None or (name == "qk_index" and not layer.heads):
                    continue
                if len(per_head) != len(layer.heads):
                    raise ValueError(f"ArchPlan: layers[{i}].{name} has {len(per_head)} entries, "
                                     f"expected one per kept head ({len(layer.heads)})")
                widths = {len(v) for v in per_head}
                if len(widths) > 1:
                    raise ValueError(f"ArchPlan: layers[{i}].{name} keeps {sorted(widths)} dims in "
                                     "different heads; every head of a layer keeps the same number")
                for h, v in enumerate(per_head):
                    _index_tuple(v, f"ArchPlan: layers[{i}].{name}[{h}]", width)
        layers = tuple(dataclasses.replace(l, qk_index=(full,) * len(l.heads))
                       if l.qk_index is None or not l.heads else l for l in layers)
        object.__setattr__(self, "layers", layers)
        for i, layer in enumerate(layers):
            if isinstance(layer.tokens, bool) or not isinstance(layer.tokens, numbers.Integral):
                raise TypeError(f"ArchPlan: layers[{i}].tokens must be an int, got {type(layer.tokens).__name__}")
            if not 0 <= layer.tokens <= spec.num_tokens:
                raise ValueError(f"ArchPlan: layers[{i}].tokens must lie in 0..{spec.num_tokens} "
                                 f"(spec.num_tokens), got {layer.tokens}")
        # Counts, ranges and token order are checked by the core.
        from . import cost
        cost.check_plan(self)

    @classmethod
    def dense(cls, spec: ViTSpec) -> "ArchPlan":
        """Everything kept."""
        if not isinstance(spec, ViTSpec):
            raise TypeError(f"ArchPlan.dense: spec must be a ViTSpec, got {type(spec).__name__}")
        v = tuple(range(spec.v_head_dim))
        layer = LayerPlan(heads=tuple(range(spec.num_heads)), v_index=(v,) * spec.num_heads,
                          neurons=tuple(range(spec.mlp_hidden)), tokens=spec.num_tokens,
                          qk_index=(tuple(range(spec.qk_head_dim)),) * spec.num_heads)
        return cls(spec, (layer,) * spec.depth)

    @property
    def counts(self) -> np.ndarray:
        """The (depth, len(PLAN_ROW)) int64 array the core reads, columns `PLAN_ROW`: kept heads,
        query/key and value dims per head, neurons; whether MHSA and MLP run; tokens entering the
        block."""
        rows = [[_ROW[name](l) for name in PLAN_ROW] for l in self.layers]
        return np.array(rows, dtype=np.int64).reshape(self.spec.depth, len(PLAN_ROW))

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "spec": self.spec.to_dict(), "layers": [l.to_dict() for l in self.layers]}

    @classmethod
    def from_dict(cls, d: dict, spec: ViTSpec | None = None) -> "ArchPlan":
        if not isinstance(d, dict) or d.get("format") not in _READS:
            got = f"format {d.get('format')!r}" if isinstance(d, dict) else f"a {type(d).__name__}"
            raise ValueError(f"ArchPlan.from_dict: expected a dict with format {PLAN_FORMAT!r} (or "
                             f"{_READS[0]!r}), got {got}")
        for key in ("layers",) + (("spec",) if spec is None else ()):
            if key not in d:
                raise ValueError(f"ArchPlan.from_dict: missing key {key!r}; expected keys "
                                 "['format', 'spec', 'layers']")
        spec = spec if spec is not None else ViTSpec.from_dict(d["spec"])
        if not isinstance(d["layers"], list):
            raise TypeError(f"ArchPlan.from_dict: layers must be a list, got {type(d['layers']).__name__}")
        layers = []
        for i, l in enumerate(d["layers"]):
            if not isinstance(l, dict):
                raise TypeError(f"ArchPlan.from_dict: layers[{i}] must be a dict, got {type(l).__name__}")
            missing = [k for k in _LAYER_KEYS if k not in l]
            if missing:
                raise ValueError(f"ArchPlan.from_dict: layers[{i}] lacks keys {missing}; "
                                 f"expected keys {list(_LAYER_KEYS)} (and optional 'qk_index', 'attn', 'mlp')")
            for key in ("heads", "v_index", "qk_index", "neurons"):
                if key not in l:  # only qk_index is optional
                    continue
                nested = key in ("v_index", "qk_index")
                if not isinstance(l[key], (list, tuple)) or (
                        nested and not all(isinstance(v, (list, tuple)) for v in l[key])):
                    raise TypeError(f"ArchPlan.from_dict: layers[{i}].{key} must be a list"
                                    f"{' of lists' if nested else ''}, got {l[key]!r:.80}")
            tokens = l["tokens"]
            if isinstance(tokens, bool) or not isinstance(tokens, numbers.Integral):
                raise TypeError(f"ArchPlan.from_dict: layers[{i}].tokens must be an int, got {type(tokens).__name__}")
            for key in ("attn", "mlp"):
                flag = l.get(key, True)
                if not isinstance(flag, (bool, np.bool_)) and not (isinstance(flag, numbers.Integral)
                                                                  and flag in (0, 1)):
                    raise TypeError(f"ArchPlan.from_dict: layers[{i}].{key} must be a bool, "
                                    f"got {type(l[key]).__name__}")
            qk = l.get("qk_index")
            layers.append(LayerPlan(heads=tuple(l["heads"]), v_index=tuple(tuple(v) for v in l["v_index"]),
                                    neurons=tuple(l["neurons"]), tokens=int(tokens),
                                    attn=bool(l.get("attn", True)), mlp=bool(l.get("mlp", True)),
                                    qk_index=None if qk is None else tuple(tuple(q) for q in qk)))
        return cls(spec, tuple(layers))

    def save(self, path: str | os.PathLike) -> None:
        """Writes the plan as JSON (atomically: a crash never leaves half a file)."""
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ArchPlan":
        """Reads a plan written by `save`. Raises FileNotFoundError, or ValueError naming the
        file and what is wrong with it."""
        name = f"{os.path.basename(os.fspath(path))} at {os.fspath(path)}"
        d = read_json(path, name)
        if isinstance(d, dict) and d.get("format") in _READS:
            for key in ("spec", "layers"):
                if key not in d:
                    raise ValueError(f"{name} is not a plan: it lacks key {key!r}")
        try:
            return cls.from_dict(d)
        except KeyError as e:
            raise ValueError(f"{name} is not a plan: it lacks key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} is not a valid plan: {e}") from None


def random_plan(spec: ViTSpec, rng: np.random.Generator, *, skip_prob: float = 0.15,
                tokens: bool = True, drop_prob: float = 0.3, qk: bool = False) -> ArchPlan:
    """A random valid plan (for tests and benchmarks): random kept heads, value dims,
    neurons, skipped block parts, with ``qk`` random query/key dims too (never under
    ``spec.qk_norm``; without ``qk`` all are kept, as a latency table prices), and, if ``tokens``, a valid token schedule in which
    each block whose MHSA runs drops tokens with probability ``drop_prob`` (when it can)."""
    if not isinstance(spec, ViTSpec):
        raise TypeError(f"random_plan: spec must be a ViTSpec, got {type(spec).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"random_plan: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    skip_prob, drop_prob = _probability("skip_prob", skip_prob), _probability("drop_prob", drop_prob)
    for name, flag in (("tokens", tokens), ("qk", qk)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"random_plan: {name} must be a bool, got {type(flag).__name__}")
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
        qk_index = None
        if qk and not spec.qk_norm:
            qk_dim = int(rng.integers(1, spec.qk_head_dim + 1))
            qk_index = tuple(tuple(sorted(rng.choice(spec.qk_head_dim, qk_dim, replace=False).tolist()))
                             for _ in heads)
        layers.append(LayerPlan(heads=heads if attn else (), v_index=v_index if attn else (),
                                neurons=neurons if mlp else (), tokens=n_tok, attn=attn, mlp=mlp,
                                qk_index=(qk_index if attn else ()) if qk_index is not None else None))
        # A drop keeps the prefix, at least one patch and the fused token: needs prefix + 3 in.
        can_drop = attn and i + 1 < spec.depth and n_tok >= spec.prefix_tokens + 3
        if tokens and can_drop and rng.random() < drop_prob:
            n_tok = int(rng.integers(spec.prefix_tokens + 2, n_tok))
    return ArchPlan(spec, tuple(layers))


def _probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"random_plan: {name} must be a number, got {type(value).__name__}")
    try:
        p = float(value)
    except (OverflowError, ValueError):
        p = math.nan
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_plan: {name} must lie in [0, 1], got {value!r}")
    return p
