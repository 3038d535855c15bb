"""The cost model: exact MACs of any plan and the expected cost with its gradient.

Every number is computed by the Swift core (`uvc._native`); this module shapes the
arrays. Units: **MACs** (multiply-accumulates) throughout; FLOPs = 2 × MACs, reported
under that name where shown.

Token slimming: block l sees ``tokens[l]`` tokens in its MHSA; when ``tokens[l+1]`` is
smaller it drops tokens right after its MHSA, so its MLP (and norm2) run on ``tokens[l+1]``
tokens, and its ``fuse`` component counts the attention that ranks them: the class token's
row (heads·tokens[l]·qk_dim MACs, qk_dim the block's kept query/key width) or, in a spec
without a class token, every query's row (heads·tokens[l]²·qk_dim), plus the weighted sum of the
tokens[l] − tokens[l+1] + 1 fused tokens (that many × embed_dim MACs). The final norm
sees ``tokens[depth-1]``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import TYPE_CHECKING

import numpy as np

from ._core import LAYOUTS, native

if TYPE_CHECKING:
    from .plan import ArchPlan
    from .spec import ViTSpec

__all__ = ["Convention", "CONVENTIONS", "CostReport", "count", "expected_cost", "relaxed_cost",
           "LAYER_COMPONENTS", "GLOBAL_COMPONENTS", "RELAXED_FIELDS", "relaxed_inputs"]

# The core's names, in its order.
LAYER_COMPONENTS: tuple[str, ...] = tuple(LAYOUTS["layer_components"])
GLOBAL_COMPONENTS: tuple[str, ...] = tuple(LAYOUTS["global_components"])
RELAXED_FIELDS: tuple[str, ...] = tuple(LAYOUTS["relaxed_fields"])
# The core's upper bound on every size of a spec.
MAX_SIZE: int = LAYOUTS["max_size"]


@dataclasses.dataclass(frozen=True)
class Convention:
    """What is counted besides matrix products (attention matmuls are always counted).

    ``layer_norm``: MACs per LayerNorm input element (0 = not counted; fvcore uses 5).
    ``softmax`` / ``gelu``: one MAC per element (``gelu``: of every MLP activation, GELU,
    QuickGELU or SiLU). ``bias``: one MAC per output element of a layer with a bias. ``head``:
    the classifier head(s). ``pool``: one MAC per element averaged by average pooling.
    """

    layer_norm: float = 0.0
    softmax: bool = False
    gelu: bool = False
    bias: bool = False
    head: bool = False
    pool: bool = False

    def __post_init__(self) -> None:
        ln = self.layer_norm
        if isinstance(ln, bool) or not isinstance(ln, numbers.Real):
            raise TypeError(f"Convention: layer_norm must be a number, got {type(ln).__name__}")
        try:
            ln = float(ln)
        except OverflowError:
            raise ValueError(f"Convention: layer_norm must be a finite number >= 0, got {ln}") from None
        if not (math.isfinite(ln) and ln >= 0):
            raise ValueError(f"Convention: layer_norm must be a finite number >= 0, got {ln}")
        object.__setattr__(self, "layer_norm", ln)
        for field in ("softmax", "gelu", "bias", "head", "pool"):
            value = getattr(self, field)
            if not isinstance(value, (bool, np.bool_)) and not (isinstance(value, numbers.Integral)
                                                                 and value in (0, 1)):
                raise TypeError(f"Convention: {field} must be a bool, got {type(value).__name__}")
            object.__setattr__(self, field, bool(value))

    @functools.cached_property
    def encoded(self) -> np.ndarray:
        e = np.array([getattr(self, name) for name in LAYOUTS["convention"]], dtype=np.float64)
        e.flags.writeable = False
        return e


CONVENTIONS = {
    # The UVC paper: linear layers, attention matmuls, patch embedding.
    "uvc": Convention(),
    # fvcore on timm with fused attention off: adds affine LayerNorm (5/element) and the head.
    "fvcore": Convention(layer_norm=5.0, head=True),
    # Everything: what Torch-Pruning-style counters add on top (bias, softmax, GELU, pooling).
    "full": Convention(layer_norm=5.0, softmax=True, gelu=True, bias=True, head=True, pool=True),
}


def as_convention(convention: "str | Convention") -> Convention:
    if isinstance(convention, Convention):
        return convention
    if isinstance(convention, str) and convention in CONVENTIONS:
        return CONVENTIONS[convention]
    raise ValueError(f"convention must be a Convention or one of {sorted(CONVENTIONS)}, got {convention!r}")


@dataclasses.dataclass(frozen=True)
class CostReport:
    """Exact MACs of one plan. ``layers``: (depth, len(LAYER_COMPONENTS)) MACs per `LAYER_COMPONENTS`;
    ``globals``: (len(GLOBAL_COMPONENTS),) MACs per `GLOBAL_COMPONENTS`."""

    spec: "ViTSpec"
    convention: Convention
    layers: np.ndarray
    globals: np.ndarray
    macs: int

    @property
    def flops(self) -> int:
        """FLOPs, counted as 2 per MAC."""
        return 2 * self.macs

    @property
    def layer_macs(self) -> np.ndarray:
        """Total MACs of each block."""
        return self.layers.sum(axis=1)

    def to_dict(self) -> dict:
        return {
            "macs": self.macs, "flops": self.flops, "gmacs": self.macs / 1e9,
            "convention": dataclasses.asdict(self.convention),
            "globals": {k: float(v) for k, v in zip(GLOBAL_COMPONENTS, self.globals)},
            "layers": [{k: float(v) for k, v in zip(LAYER_COMPONENTS, row)} for row in self.layers],
        }


def count(spec: "ViTSpec", plan: "ArchPlan | None" = None, convention: "str | Convention" = "uvc") -> CostReport:
    """Exact MACs of ``plan`` (the dense model when None) under ``convention``."""
    from .plan import ArchPlan
    _check_spec_arg("count", spec)
    conv = as_convention(convention)
    if plan is None:
        plan = ArchPlan.dense(spec)
    elif not isinstance(plan, ArchPlan):
        raise TypeError(f"count: plan must be an ArchPlan, got {type(plan).__name__}")
    elif plan.spec != spec:
        raise ValueError("count: plan was built for a different spec")
    return _count_counts(spec, plan.counts, conv)


def _count_counts(spec: "ViTSpec", counts: np.ndarray, conv: Convention) -> CostReport:
    layers = np.empty((spec.depth, len(LAYER_COMPONENTS)), dtype=np.float64)
    glob = np.empty(len(GLOBAL_COMPONENTS), dtype=np.float64)
    total = native.cost_exact(spec.encoded, conv.encoded, counts, layers, glob)
    if not math.isfinite(total):
        raise ValueError(f"count: the total MACs overflow float64 (got {total}) under convention {conv}")
    return CostReport(spec, conv, layers, glob, int(round(total)))


def _check_spec_arg(fn: str, spec: object) -> None:
    from .spec import ViTSpec
    if not isinstance(spec, ViTSpec):
        raise TypeError(f"{fn}: spec must be a ViTSpec, got {type(spec).__name__}")


def check_spec(spec: "ViTSpec") -> None:
    """Raises ValueError unless the core accepts ``spec`` (used by `ViTSpec` itself)."""
    # The core's bound; checked here before the per-layer counts are allocated.
    if not 1 <= spec.depth <= MAX_SIZE:
        raise ValueError(f"ViTSpec: spec.depth: must be {'at least 1' if spec.depth < 1 else f'at most {MAX_SIZE}'}, "
                         f"got {spec.depth}")
    if min(spec.image_size) < 1:
        raise ValueError(f"ViTSpec: spec.image_size: must be at least 1 pixel each way, got {spec.image_size}")
    try:
        row = np.array([_dense_layer(spec)[name] for name in LAYOUTS["plan_row"]], dtype=np.int64)
    except OverflowError:  # a derived size: num_tokens = patches + prefix tokens
        raise ValueError(f"ViTSpec: spec.num_tokens: {spec.num_tokens} tokens (patches plus prefix tokens) "
                         "do not fit in int64") from None
    counts = np.tile(row, (spec.depth, 1))
    try:
        _count_counts(spec, counts, CONVENTIONS["uvc"])
    except ValueError as e:
        raise ValueError(f"ViTSpec: {e}") from None


def check_plan(plan: "ArchPlan") -> None:
    """Raises ValueError unless the core accepts the plan's counts."""
    try:
        _count_counts(plan.spec, plan.counts, CONVENTIONS["uvc"])
    except ValueError as e:
        raise ValueError(f"ArchPlan: {e}") from None


def expected_cost(spec: "ViTSpec", x: np.ndarray, out: np.ndarray | None = None,
                  convention: "str | Convention" = "uvc") -> float:
    """Expected MACs of the relaxed architecture ``x`` and its gradient.

    ``x``: float64 array of shape (len(RELAXED_FIELDS), depth), rows `RELAXED_FIELDS` (expected
    kept heads, query/key dims and value dims per head, MLP neurons; probabilities that the
    MHSA and MLP parts run; expected tokens entering each block). ``out``: optional float64
    array of the same shape that
    receives d(MACs)/dx; a new array is allocated when None (then only the cost is returned,
    use `relaxed_cost` to get both). Returns the expected MACs.

    ``tokens[l+1]`` also sizes block l's MLP and token fusion (see the module doc); the
    fusion term of a block counts when ``tokens[l+1] < tokens[l]`` and its gradient treats
    that indicator as constant (the cost is piecewise smooth in the tokens).

    This is the hot path of the solver: no checks happen in Python, the core checks
    dtype, shape, contiguity and ranges.
    """
    _check_spec_arg("expected_cost", spec)
    if out is None:  # the core checks x's shape: never allocate after a (maybe huge) wrong one
        out = np.empty((len(RELAXED_FIELDS), spec.depth), dtype=np.float64)
    conv = convention if isinstance(convention, Convention) else as_convention(convention)
    return native.cost_expected(spec.encoded, conv.encoded, x, out)


def _dense_layer(spec: "ViTSpec") -> dict:
    """One dense block by the core's field names: everything kept, both parts running."""
    return {"heads": spec.num_heads, "qk_dim": spec.qk_head_dim, "v_dim": spec.v_head_dim,
            "neurons": spec.mlp_hidden, "attn": 1, "mlp": 1, "attn_gate": 1.0, "mlp_gate": 1.0,
            "tokens": spec.num_tokens}


def relaxed_inputs(spec: "ViTSpec", *, heads=None, qk_dim=None, v_dim=None, neurons=None, attn_gate=None,
                   mlp_gate=None, tokens=None) -> np.ndarray:
    """Builds the (len(RELAXED_FIELDS), depth) input of `expected_cost`; fields left out are
    dense (everything kept, gates 1). Each given field is a scalar or a length-depth sequence."""
    _check_spec_arg("relaxed_inputs", spec)
    x = np.empty((len(RELAXED_FIELDS), spec.depth), dtype=np.float64)
    dense = _dense_layer(spec)
    given = dict(heads=heads, qk_dim=qk_dim, v_dim=v_dim, neurons=neurons, attn_gate=attn_gate,
                 mlp_gate=mlp_gate, tokens=tokens)
    for row, name in enumerate(RELAXED_FIELDS):
        value = given[name]
        if value is None:
            x[row] = dense[name]
            continue
        try:
            v = np.asarray(value, dtype=np.float64)
        except OverflowError:
            raise ValueError(f"relaxed_inputs: {name} must be finite float64 values, got one too large") from None
        if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != spec.depth):
            raise ValueError(f"relaxed_inputs: {name} must be a scalar or have length {spec.depth}, got shape {v.shape}")
        x[row] = v
    return x


def relaxed_cost(spec: "ViTSpec", convention: "str | Convention" = "uvc", **fields) -> tuple[float, dict]:
    """Expected MACs and its gradient by field name; see `relaxed_inputs` for the fields.

    Returns ``(macs, {field: d(macs)/d(field) array of length depth})``.
    """
    _check_spec_arg("relaxed_cost", spec)
    x = relaxed_inputs(spec, **fields)
    grad = np.empty_like(x)
    macs = expected_cost(spec, x, grad, convention)
    return macs, {name: grad[i] for i, name in enumerate(RELAXED_FIELDS)}
