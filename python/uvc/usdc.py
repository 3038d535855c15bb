"""USDC (seed 002): group partitions, group-level gates and the resource loss, on numpy arrays.

The mathematics runs in the Swift core (`uvc._native`); this module shapes the arrays. The
torch adapter (`uvc.torch.usdc`) computes the same group gates on the model's device and is
tested against `group_gates` here.

* `GroupSampler`: the seeded source of each training step's partition of the batch into
  sub-groups of halving sizes (B = 8: 4, 2, 1, 1; see `group_sizes`), shuffled, and of the
  logistic noise of each group's gate decisions. Its state is serialisable.
* `group_gates` / `group_gates_backward`: every sub-group pools its members' gate log-odds
  (mean) and takes one straight-through Gumbel-sigmoid decision, broadcast back to its members;
  the backward pass hands each member its share of the group's gradient.
* `resource_loss`: γ·(F − target)² (+ a dual's z·(F − target)) with F the expected cost of the statically (keep
  probabilities a₀) and dynamically (execution rates g) compressed model, gate networks
  included, over the dense cost; with its exact gradient w.r.t. every input array. The cost
  is MACs, or with a `uvc.LatencyTable` milliseconds of that table.

Units: MACs (multiply-accumulates; FLOPs = 2 × MACs), or ms per batch of the table's batch size.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

from ._core import LAYOUTS, check_format, decode_state, encode_state, native, seed_bits
from .cost import Convention, as_convention
from .latency import NO_TABLE, LatencyTable
from .spec import ViTSpec

__all__ = ["GroupSampler", "Partition", "group_sizes", "group_gates", "group_gates_backward", "whole_batch",
           "resource_loss", "ResourceLossResult", "SAMPLER_FORMAT", "GROUPINGS"]

SAMPLER_FORMAT = "uvc.usdc_sampler/2"
# The core's groupings, in its order.
GROUPINGS: tuple[str, ...] = tuple(LAYOUTS["groupings"])


# Bounds checked before anything is allocated: a batch, a number of gate columns, and the
# elements of any one input array (far above any real use, far below what fits in memory).
MAX_BATCH = 1 << 24
MAX_COLUMNS = 1 << 16
MAX_ELEMENTS = 1 << 24


def _int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a number that fits in a float64, got one too large") from None


def _array(name: str, value: Any, dtype, max_size: int = MAX_ELEMENTS) -> np.ndarray:
    """A C-contiguous array of ``dtype`` from an array or nested sequence of numbers, of at
    most ``max_size`` elements (checked before copying: a stride-0 view may be huge)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf" or (dtype == np.int64 and arr.dtype.kind == "f"):
        raise TypeError(f"{name} must be an array of {'integers' if dtype == np.int64 else 'numbers'}, "
                        f"got dtype {arr.dtype}")
    if arr.size > max_size:
        raise ValueError(f"{name} must have at most {max_size} elements, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def group_sizes(batch: int) -> np.ndarray:
    """Sizes (int64) of the sub-groups of a batch of ``batch`` samples: each group takes half of
    the samples not yet grouped, rounded up, until one is left, which is the last group.
    B = 8: [4, 2, 1, 1]; B = 7: [4, 2, 1]; B = 6: [3, 2, 1]. They sum to B; there are
    ``batch.bit_length()`` of them."""
    batch = _int("batch", batch, 1, MAX_BATCH)
    # The sizes do not depend on the generator: any valid state will do.
    return GroupSampler(0).sample(batch, 0).sizes


@dataclasses.dataclass(frozen=True)
class Partition:
    """One step's sub-groups. ``groups``: (B,) int64 group id of each sample; ``sizes``: (G,)
    int64 samples per group; ``noise``: (G, C) float64 standard logistic noise, one value per
    group and gate column."""

    groups: np.ndarray
    sizes: np.ndarray
    noise: np.ndarray

    @property
    def group_count(self) -> int:
        return len(self.sizes)


class GroupSampler:
    """Seeded partitions and gate noise for group-level gate augmentation.

    ``seed``: an int in [0, 2**64). Each `sample` advances the generator; `state_dict` /
    `load_state_dict` save and restore it bit for bit. The generator lives in the core
    (`uvc._native.GroupSampler`); one sampler serves one thread at a time.
    """

    def __init__(self, seed: int = 0) -> None:
        seed = _int("seed", seed, 0)
        if seed >= 2**64:
            raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
        self._core = native.GroupSampler(seed_bits(seed))

    def sample(self, batch: int, columns: int, grouping: str = "halving") -> Partition:
        """The partition of a batch of ``batch`` samples and the noise of ``columns`` gate
        columns per group (e.g. 2 × depth: the MHSA and MLP gate of every layer).

        ``grouping``: ``"halving"`` (USDC's shuffled halving groups), the baselines
        ``"sample"`` (every sample its own group) and ``"batch"`` (one group), or ``"mixed"``:
        halving groups for ⌈B/2⌉ samples and one group per sample for the rest, shuffled, so
        that single-sample decisions (inference at batch 1) are as common in training as
        pooled ones."""
        batch, columns = _int("batch", batch, 1, MAX_BATCH), _int("columns", columns, 0, MAX_COLUMNS)
        if not isinstance(grouping, str) or grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
        mode = GROUPINGS.index(grouping)
        count = int(self._core.group_count(mode, batch))
        if count * columns > MAX_ELEMENTS:
            raise ValueError(f"batch and columns: {count} groups x {columns} columns of noise exceed "
                             f"{MAX_ELEMENTS} values; got batch {batch}, columns {columns}")
        groups, sizes = np.empty(batch, dtype=np.int64), np.empty(count, dtype=np.int64)
        noise = np.empty((count, columns), dtype=np.float64)
        self._core.sample(mode, groups, sizes, noise)
        return Partition(groups, sizes, noise)

    def noise(self, count: int) -> np.ndarray:
        """``count`` standard logistic noise values (float64), e.g. for straight-through samples
        of static keep decisions; from the same stream as the partitions."""
        count = _int("count", count, 0, MAX_COLUMNS)
        return self.sample(1, count, "batch").noise[0]

    def state_dict(self) -> dict:
        """The generator's state: the core's versioned byte string, base64 (JSON-serialisable)."""
        return {"format": SAMPLER_FORMAT, "state": encode_state(self._core.save())}

    def load_state_dict(self, d: dict) -> None:
        """Restores a `state_dict`; on error nothing changes."""
        fn = "GroupSampler.load_state_dict"
        check_format(fn, d, SAMPLER_FORMAT, {"uvc.usdc_sampler/1": "uvc 0.1 (the generator's words)"})
        if "state" not in d:
            raise ValueError(f"{fn}: missing key 'state'; expected keys ['format', 'state']")
        self._core.load(decode_state(fn, d["state"]))


def whole_batch(batch: int, columns: int) -> Partition:
    """The inference partition: the whole batch is one group, no noise, so `group_gates` with
    ``straight_through=True`` runs a part iff the batch's mean log-odds are positive."""
    batch, columns = _int("batch", batch, 1, MAX_BATCH), _int("columns", columns, 0, MAX_COLUMNS)
    return Partition(np.zeros(batch, dtype=np.int64), np.array([batch], dtype=np.int64),
                     np.zeros((1, columns), dtype=np.float64))


def group_gates(logits, groups, noise, *, tau: float = 1.0,
                straight_through: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Group-level gates. ``logits``: (B, C) log-odds of running each gated part (a run/skip
    logit pair reduces to its difference); ``groups``: (B,) group ids in 0..G−1; ``noise``:
    (G, C). Each group k pools D[k] = mean of its members' logits and decides
    soft = σ((D + noise)/τ); the gate is [soft > ½] with ``straight_through``, else soft.

    Returns (gates, probs), both (B, C) float64: each member's gate value and its group's run
    probability σ(D) (what the resource loss counts)."""
    if not isinstance(straight_through, (bool, np.bool_)):
        raise TypeError(f"straight_through must be a bool, got {type(straight_through).__name__}")
    x = _array("logits", logits, np.float64)
    g = _array("groups", groups, np.int64, max(x.shape[:1], default=0))
    n = _array("noise", noise, np.float64, x.size)
    gates, probs = np.empty_like(x), np.empty_like(x)
    native.group_gates(x, g, n, _real("tau", tau), float(straight_through), gates, probs)
    return gates, probs


def group_gates_backward(logits, groups, noise, gate_grad, prob_grad=None, *, tau: float = 1.0) -> np.ndarray:
    """∂L/∂logits (B, C) given ∂L/∂gates and ∂L/∂probs (each (B, C); ``prob_grad`` None = 0)
    of `group_gates` on the same inputs. The gate's gradient is that of its soft value
    (straight-through); each member of a group gets 1/|group| of the group's gradient."""
    x = _array("logits", logits, np.float64)
    g = _array("groups", groups, np.int64, max(x.shape[:1], default=0))
    n = _array("noise", noise, np.float64, x.size)
    up = _array("gate_grad", gate_grad, np.float64, x.size)
    pg = np.zeros_like(x) if prob_grad is None else _array("prob_grad", prob_grad, np.float64, x.size)
    grad = np.empty_like(x)
    native.group_gates_backward(x, g, n, up, pg, _real("tau", tau), grad)
    return grad


@dataclasses.dataclass(frozen=True)
class ResourceLossResult:
    """``loss`` = γ·(F − target)² + dual·(F − target); ``ratio`` = F; ``cost``: the expected cost,
    gate networks included, in ``unit`` ("MACs", or "ms" with a latency table); ``grad``:
    ∂loss/∂(each input array) by input name."""

    loss: float
    ratio: float
    cost: float
    unit: str
    grad: dict[str, np.ndarray]

    @property
    def macs(self) -> float:
        """The expected MACs (``cost`` of a MACs budget)."""
        if self.unit != "MACs":
            raise ValueError(f"ResourceLossResult.macs: this loss was priced in {self.unit} by a latency table; "
                             f"read .cost")
        return self.cost


_LOSS_INPUTS = ("head_probs", "neuron_probs", "part_probs", "rates", "gate_macs", "gate_probs")


def resource_loss(spec: ViTSpec, *, head_probs, neuron_probs, part_probs, rates, gate_macs=None, gate_probs=None,
                  target: float, gamma: float = 100.0, dual: float = 0.0, convention: "str | Convention" = "uvc",
                  latency: LatencyTable | None = None, gate_ms=None) -> ResourceLossResult:
    """USDC's resource loss γ·(F − target)² + dual·(F − target) (seed 002, Eq. 9–11) and its
    exact gradient. ``dual`` = 0 is the paper's penalty; ``gamma`` = 0 with a dual z ≥ 0 that
    the caller raises while F > target is a UVC-style primal-dual budget term.

    Per layer l (arrays of ``spec.depth`` rows; probabilities in [0, 1]):
    ``head_probs`` (depth, heads) static keep probability a₀ of each head; ``neuron_probs``
    (depth, K) that of each of K equal MLP neuron groups (K divides ``spec.mlp_hidden``);
    ``part_probs`` (depth, 2) that of the MHSA and MLP part; ``rates`` (depth, 2) dynamic
    execution rate g of each part (mean gate over the batch); ``gate_macs`` (depth, O) MACs
    per sample of each gate-network option and ``gate_probs`` (depth, O) its architecture
    weight (None: no gate networks).

    F = [C(heads Σa_h, neurons (M/K)·Σa_n, gates a_attn·g_attn and a_mlp·g_mlp)
         + Σ_l alive_l·Σ_o p_{l,o}·G_{l,o}] / dense MACs, with C the cost model's expected MACs
    under ``convention`` (dense value dims and tokens) and alive_l = 1 − (1 − a_attn)(1 − a_mlp)
    (a layer's gate network goes only with the whole layer). ``target``: the wanted F.

    ``latency``: a `uvc.LatencyTable` measured for ``spec``: C is then the table's latency in ms
    at the expected counts (piecewise linear, exact at 0/1 inputs), F a ratio of the table's
    dense latency, and the gate networks' cost is ``gate_ms`` (depth, O): ms per batch of each
    option at the table's batch size (`uvc.torch.usdc.gates.gate_ms`), in place of
    ``gate_macs``. ``grad`` then names that input ``gate_ms``.
    """
    if not isinstance(spec, ViTSpec):
        raise TypeError(f"spec must be a ViTSpec, got {type(spec).__name__}")
    conv = as_convention(convention)
    if latency is None:
        if gate_ms is not None:
            raise ValueError("resource_loss: gate_ms prices gate networks in a latency budget; without latency= "
                             "give gate_macs")
        cost_name, gate_cost, table = "gate_macs", gate_macs, NO_TABLE
    else:
        if not isinstance(latency, LatencyTable):
            raise TypeError(f"resource_loss: latency must be a uvc.LatencyTable, got {type(latency).__name__}")
        if gate_macs is not None:
            raise ValueError("resource_loss: a latency budget prices gate networks in ms: give gate_ms, not gate_macs")
        cost_name, gate_cost, table = "gate_ms", gate_ms, latency.check(spec).native_args
    if (gate_cost is None) != (gate_probs is None):
        raise ValueError(f"{cost_name} and gate_probs go together: give both or neither")
    if gate_cost is None:
        gate_cost = gate_probs = np.zeros((spec.depth, 0))
    names = _LOSS_INPUTS[:4] + (cost_name, "gate_probs")
    given = dict(zip(names, (head_probs, neuron_probs, part_probs, rates, gate_cost, gate_probs)))
    d = spec.depth
    limits = dict(head_probs=d * spec.num_heads, neuron_probs=d * spec.mlp_hidden, part_probs=2 * d, rates=2 * d)
    inputs = [_array(name, given[name], np.float64, limits.get(name, MAX_ELEMENTS)) for name in names]
    grads = [np.empty_like(a) for a in inputs]
    values = np.empty(3)
    native.resource_loss(spec.encoded, conv.encoded, *inputs, _real("target", target), _real("gamma", gamma),
                         _real("dual", dual), values, *grads, *table)
    return ResourceLossResult(float(values[0]), float(values[1]), float(values[2]),
                              "MACs" if latency is None else "ms", dict(zip(names, grads)))
