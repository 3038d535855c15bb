"""Typed stub of `uvc._native`, the Swift core behind a C bridge (Sources/CPyBridge).

Arrays are C-contiguous numpy arrays of float64 (``F``) or int64 (``I``); outputs (``*_out``,
``*_factor``, ``*_mask``, ``out``) must be writable and share no memory with any other
argument. Shapes use ``d`` = spec depth, ``h`` = heads, ``v`` = value dims per head, ``k`` =
MLP neurons. Numbers are Python floats or ints. Every bad argument raises TypeError or
ValueError naming it; a call that raises changes no state. An object is used by one thread
at a time: a call while another thread's call on the same object runs raises RuntimeError.
Costs are MACs.
"""
from typing import Optional

import numpy as np
import numpy.typing as npt

F = npt.NDArray[np.float64]
I = npt.NDArray[np.int64]

def layouts() -> str:
    """JSON: the names and order of every flat encoding (spec, convention, plan row, cost
    components, relaxed fields, groupings, solver config fields with kinds and defaults, the latency table's arrays)."""

def cost_exact(spec: I, convention: F, plan: I, layers_out: F, globals_out: F) -> float:
    """Exact MACs of a plan (d, len(plan_row)); writes the (d, len(layer_components)) and (len(global_components),) breakdown."""

def cost_expected(spec: I, convention: F, x: F, out: F) -> float:
    """Expected MACs of the relaxed (len(RELAXED_FIELDS), d) input ``x``; writes d(MACs)/dx into ``out``."""

def latency_exact(spec: I, heads: I, v_dims: I, neurons: I, tokens: I, attention_ms: F, mlp_ms: F, drop_ms: F,
                  fixed_ms: float, plan: I, layers_out: F) -> float:
    """A latency table's ms of a plan (d, len(plan_row)) whose token counts the table's ``tokens``
    grid spans; attention_ms (heads, v_dims, tokens), mlp_ms (neurons, tokens), drop_ms (tokens,)
    (`layouts`' ``latency_table`` lists these names in order); writes each block's MHSA (with its
    drop) and MLP ms into the (d, 2) ``layers_out``. The table is checked whole."""

def latency_expected(spec: I, heads: I, v_dims: I, neurons: I, tokens: I, attention_ms: F, mlp_ms: F, drop_ms: F,
                     fixed_ms: float, x: F, out: F) -> float:
    """A latency table's relaxed ms of the (len(RELAXED_FIELDS), d) input ``x``; writes d(ms)/dx into ``out``."""

def group_gates(logits: F, groups: I, noise: F, tau: float, straight_through: float,
                gates_out: F, probs_out: F) -> None:
    """USDC group gates: logits (B, C), groups (B,), noise (G, C); outputs (B, C)."""

def group_gates_backward(logits: F, groups: I, noise: F, gate_grad: F, prob_grad: F, tau: float,
                         grad_out: F) -> None:
    """Backward of `group_gates`: gate_grad, prob_grad and grad_out (B, C)."""

def resource_loss(spec: I, convention: F, head_probs: F, neuron_probs: F, part_probs: F, rates: F,
                  gate_costs: F, gate_probs: F, target: float, gamma: float, dual: float,
                  values_out: F, head_grad: F, neuron_grad: F, part_grad: F, rate_grad: F,
                  gate_costs_grad: F, gate_probs_grad: F, heads: Optional[I], v_dims: Optional[I],
                  neurons: Optional[I], tokens: Optional[I], attention_ms: Optional[F], mlp_ms: Optional[F],
                  drop_ms: Optional[F], fixed_ms: Optional[float]) -> None:
    """USDC's resource loss; values_out (3,): loss, F, expected cost (MACs, or ms with the latency
    table's arrays, all None for MACs; see `latency_exact`); each grad its input's shape."""

def gram_accumulate(x: npt.NDArray[np.floating], y: npt.NDArray[np.floating], xtx: F, xty: F) -> None:
    """Adds XᵀX to xtx (d, d) and XᵀY to xty (d, m) for x (n, d), y (n, m), both float32 or both
    float64 (summed in float64, OpenBLAS)."""

def ridge_solve(xtx: F, xty: F, kept: I, ridge: float, out: F) -> float:
    """(X_SᵀX_S + λI)⁻¹ X_SᵀY for the increasing column indices ``kept`` into out (len(kept), m),
    λ = ridge × mean diag(X_SᵀX_S); returns 0 (Cholesky) or 1 (eigen fallback: minimum norm)."""

class Solver:
    """UVC's solver, its state and the scores of its last step, owned by the core."""

    def __init__(self, spec: I, convention: F, config: F, zlr_schedule: F, seed: int, heads: Optional[I],
                 v_dims: Optional[I], neurons: Optional[I], tokens: Optional[I], attention_ms: Optional[F],
                 mlp_ms: Optional[F], drop_ms: Optional[F], fixed_ms: Optional[float]) -> None:
        """``config``: the ``solver_config`` fields of `layouts` in order; ``seed``: an int64
        (the bit pattern of a uint64 seed); the latency table's arrays (all None: a MACs budget;
        see `latency_exact`). Raises ValueError for an unreachable budget."""
    def layout(self) -> str:
        """JSON: ``groups`` (the three per-group array shapes), ``summary`` and ``fields``
        (name, shape) in the order `summary` and `fields` write them."""
    def sample_gates(self, epoch: float, gates_out: F) -> None:
        """This step's gate draws into gates_out (d, 2)."""
    def step(self, head_scores: F, dim_scores: F, neuron_scores: F, gate_grad: Optional[F],
             token_scores: Optional[F], lr: float, epoch: float,
             head_factor: F, dim_factor: F, neuron_factor: F) -> None:
        """One step: scores (d, h), (d, h, v), (d, k); gate_grad (d, 2) or None; token_scores
        (d, num_tokens) or None; writes the proximal factors (shapes of the scores)."""
    def masks(self, head_mask: F, dim_mask: F, neuron_mask: F) -> None:
        """Keep masks of the committed counts under the last scores."""
    def plan(self, round_to: int, fit: int, counts_out: I, head_mask: F, dim_mask: F, neuron_mask: F) -> float:
        """The export plan (fitted to the budget from both sides when ``fit`` is 1): rows
        (d, len(plan_row)), keep masks; returns its exact MACs."""
    def summary(self, out: F) -> None:
        """The ``summary`` layout's values, flattened."""
    def fields(self, out: F) -> None:
        """The state's ``fields``, flattened (diagnostics)."""
    def save(self) -> bytes:
        """The state and last scores as one versioned byte string."""
    def load(self, state: bytes) -> None:
        """Restores `save`'s bytes, checking every value; on error nothing changes."""

class GroupSampler:
    """USDC's seeded partition and gate-noise generator, owned by the core."""

    def __init__(self, seed: int) -> None:
        """``seed``: an int64 (the bit pattern of a uint64 seed)."""
    def group_count(self, grouping: int, batch: int) -> float:
        """Groups of a batch of ``batch`` under grouping ``grouping`` (index into ``groupings``)."""
    def sample(self, grouping: int, groups_out: I, sizes_out: I, noise_out: F) -> None:
        """A partition of B = len(groups_out) samples: sizes_out (G,), noise_out (G, C)."""
    def save(self) -> bytes:
        """The generator state as one versioned byte string."""
    def load(self, state: bytes) -> None:
        """Restores `save`'s bytes; on error nothing changes."""
