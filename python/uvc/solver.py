"""`Solver`: UVC's primal-dual architecture search (REFERENCE.md §2–4) on numpy arrays.

The mathematics and the state live in the Swift core (`uvc._native.Solver`, which also keeps
the last step's scores); this module checks types and shapes results. No torch: scores, gate
gradients and factors are float64 numpy arrays. Field names, orders and defaults come from the
core (`uvc._core.LAYOUTS`).

    solver = uvc.Solver(spec, budget=0.5)
    gates = solver.sample_gates(epoch)            # (depth, 2) keep weights of MHSA / MLP
    ... forward with the masks and gates, backward, optimizer step ...
    res = solver.step(head_scores, dim_scores, neuron_scores, gate_grad, lr=lr, epoch=epoch)
    ... multiply proj / fc2 input columns by res.head_factor, res.dim_factor, res.neuron_factor ...
    plan = solver.plan(round_to=8)

Costs are **MACs** (multiply-accumulates, FLOPs = 2 × MACs) under the chosen cost convention.

What differs from the original code, and why (REFERENCE.md §6):

* Scores are normalised per kind (divided by that kind's mean over all layers), so the group
  duals and z are unitless and one set of defaults fits any model scale, while a layer of
  weaker groups stays cheaper to prune. LeastSum is the removed score mass over that of a
  layer's worth of average groups; the proximal factor is ``1 / (1 + 2·η_W·dual)`` with the
  dual in raw score units (the normalised dual over a layer's worth of average score).
* LeastSum is piecewise linear in the continuous count (exact at integers), so a count at
  equilibrium settles on an integer; masks and the plan use integer counts that change with
  hysteresis. Counts move in fractions of a layer's groups, so heads, value dims and neurons
  move at the same relative speed.
* Gradients use the EXPECTED cost (gate probabilities, never a random sample). z rises while
  the architecture the state heads for (gate decisions, continuous counts) exceeds the budget,
  so the exported plan meets the budget even while gate probabilities are not yet 0/1 (they
  start at 0.88); integer counts there would make z chase a staircase and cycle.
* The z learning-rate schedule takes effect: η_z = z_lr · zlr_gamma^k, k the number of
  ``zlr_schedule`` epochs reached (the original meant a growing η_z and never applied it);
  ``z_grad_clip`` bounds |R − B| in each z step.
* Value dims are pruned per LAYER (one kept width shared by the layer's kept heads): per-head
  widths would need a matmul per head (or padding that saves no MACs) after export; one width
  keeps every exported layer a single rectangular SDPA call.
* Tokens (``prune_tokens=True``; the original's patch gating, parsed and ignored there) are a
  budgeted dimension like the others: block l < depth − 1 removes a continuous number r_l of
  tokens after its MHSA (tokens[l+1] = tokens[l] − r_l, tokens[0] all of them, so the schedule
  never increases), with Σ r ≤ num_patches − 2 so a drop keeps the prefix, one patch and the fused
  token. Its task term is LeastSum over the block's class attention (the mass of the r_l least
  attended tokens, slope: the next one's attention) counted once per later block, its budget
  term the MACs one more dropped token saves in every later block: both scale with the blocks
  after l, so a token of average attention is priced like a group of average score. Same
  primal-dual step and same budget price as the counts, so the solver chooses the mix. A block
  whose MHSA does not run removes nothing.
* The budget is an augmented Lagrangian, z·(R − B) + (ρ/2)·(R − B)² (``budget_damping`` = ρ):
  counts, token removals and gate logits all see the one price max(0, z + ρ·(R − B)). The ρ
  term prices a violation from the first step (z alone needs many steps to grow, then
  overshoots) and makes the primal–dual pair settle, where attention is flat too; giving it to
  one axis only would give that axis a head start over the others.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from typing import Any, Iterable

import numpy as np

from ._core import LAYOUTS, check_format, decode_state, encode_state, native, seed_bits
from .cost import Convention, as_convention, count
from .latency import NO_TABLE, LatencyTable
from .plan import PLAN_ROW, ArchPlan, LayerPlan
from .spec import ViTSpec

__all__ = ["Solver", "StepResult", "SOLVER_FORMAT", "DEFAULTS", "highest"]

SOLVER_FORMAT = "uvc.solver/3"
# Formats this version refuses, with what saved them.
_OLD_FORMATS = {"uvc.solver/2": "uvc 0.1 (the state as named arrays)"}

# The core's config fields, in its order: name, kind (flag, choice, int, real), count, default, choices.
_CONFIG: list[dict] = LAYOUTS["solver_config"]


def _default(entry: dict) -> Any:
    values = entry["default"]
    if entry["kind"] == "flag":
        return bool(values[0])
    if entry["kind"] == "choice":
        return entry["choices"][int(values[0])]
    if entry["kind"] == "int":
        return int(values[0])
    return float(values[0]) if entry["count"] == 1 else tuple(float(v) for v in values)


# The core's defaults (the published DeiT-Tiny run where it defines a value, REFERENCE.md §4;
# see the module docstring). ``budget`` is `Solver`'s own argument.
DEFAULTS: dict[str, Any] = {e["name"]: _default(e) for e in _CONFIG if e["name"] != "budget"}
DEFAULTS["zlr_schedule"] = tuple(float(e) for e in LAYOUTS["zlr_schedule"])


@dataclasses.dataclass(frozen=True)
class StepResult:
    """Proximal factors of one step: multiply each group's input columns of ``attn.proj``
    (heads × value dims) and ``mlp.fc2`` (neurons) by them; 1 leaves a group untouched.

    The arrays are owned by the solver and overwritten by its next `Solver.step`: copy them
    to keep them.
    """

    head_factor: np.ndarray
    dim_factor: np.ndarray
    neuron_factor: np.ndarray


def highest(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` highest ``scores`` along the last axis, ties to the lower index,
    in increasing order: the query/key dims a head keeps (`Solver.plan`, the Compressor's mask)."""
    return np.sort(np.argsort(-scores, axis=-1, kind="stable")[..., :count], axis=-1)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Solver: {name} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        got = f"an int of {int(value).bit_length()} bits" if isinstance(value, numbers.Integral) else "one too large"
        raise ValueError(f"Solver: {name} must be a number that fits in a float64, got {got}") from None


def _hyper(spec: ViTSpec, budget: Any, budget_macs: Any, convention: Convention, seed: Any,
           options: dict) -> tuple[dict, int]:
    """Checks types and names by the core's field kinds (ranges are the core's business);
    returns (hyper, seed)."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"Solver: unknown hyper-parameters {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    hyper = dict(DEFAULTS, **options)
    for e in _CONFIG:
        name, kind, n = e["name"], e["kind"], e["count"]
        if name == "budget":
            continue
        value = hyper[name]
        if kind == "flag":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"Solver: {name} must be a bool, got {type(value).__name__}")
            hyper[name] = bool(value)
        elif kind == "choice":
            if value not in e["choices"]:
                raise ValueError(f"Solver: {name} must be one of {tuple(e['choices'])}, got {value!r}")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"Solver: {name} must be an int, got {type(value).__name__}")
            _number(name, value)  # one that fits in a float64: the core checks the range
            hyper[name] = int(value)
        elif n > 1:
            values = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else (value,)
            values = values * n if len(values) == 1 else values  # one value for every kind (`--lr-counts 0.1`)
            if len(values) != n:
                raise ValueError(f"Solver: {name} must be a number or {n} numbers, got {len(values)}")
            hyper[name] = tuple(_number(name, v) for v in values)
        else:
            hyper[name] = _number(name, value)
    schedule = hyper["zlr_schedule"]
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Iterable):
        raise TypeError("Solver: zlr_schedule must be a sequence of epochs")
    hyper["zlr_schedule"] = tuple(_number("zlr_schedule", e) for e in schedule)
    if budget_macs is not None:
        dense = count(spec, None, convention).macs
        budget_macs = _number("budget_macs", budget_macs)
        if not 0 < budget_macs <= dense:
            raise ValueError(f"Solver: budget_macs must lie in (0, {dense}] (the dense MACs), got {budget_macs}")
        budget = budget_macs / dense
    hyper["budget"] = _number("budget", budget)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"Solver: seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"Solver: seed must lie in [0, 2**64), got {seed}")
    return hyper, int(seed)


def _new(spec: ViTSpec, hyper: dict, convention: Convention, seed: int, latency=None):
    """The core's solver for these settings (it checks every range and the budget's reach);
    ``latency``: a `uvc.LatencyTable` to budget ms instead of MACs."""
    values: list[float] = []
    for e in _CONFIG:
        v = hyper[e["name"]]
        v = e["choices"].index(v) if e["kind"] == "choice" else v
        values.extend(v if e["count"] > 1 else (v,))
    config = np.array(values, dtype=np.float64)
    schedule = np.array(hyper["zlr_schedule"], dtype=np.float64).reshape(-1)
    try:
        table = latency.native_args if latency is not None else NO_TABLE
        return native.Solver(spec.encoded, convention.encoded, config, schedule, seed_bits(seed), *table)
    except ValueError as e:
        raise ValueError(f"Solver: {e}") from None


def _latency(spec: ViTSpec, latency: Any, budget_macs: Any, budget_ms: Any) -> "LatencyTable | None":
    """Checks the latency arguments against each other and the spec; returns the table."""
    if latency is None:
        if budget_ms is not None:
            raise ValueError("Solver: budget_ms needs a latency table (latency=uvc.LatencyTable.load(...))")
        return None
    if not isinstance(latency, LatencyTable):
        raise TypeError(f"Solver: latency must be a uvc.LatencyTable, got {type(latency).__name__}")
    if budget_macs is not None:
        raise ValueError("Solver: budget_macs and a latency table exclude each other (the budget is in ms: "
                         "budget= a fraction of the dense latency, or budget_ms=)")
    return latency.check(spec)


def _unpack(flat: np.ndarray, layout: list) -> dict[str, np.ndarray]:
    """Views of a flat array by the core's (name, shape) layout."""
    out, at = {}, 0
    for name, shape in layout:
        n = int(np.prod(shape, dtype=np.int64))
        out[name] = flat[at:at + n].reshape(shape)
        at += n
    return out


class Solver:
    """UVC's solver for one `ViTSpec`: which heads, value dims, MLP neurons and block parts (and
    optionally how many tokens per block) to keep so that the model costs ``budget`` × its
    dense MACs.

    ``budget``: fraction of the dense MACs to keep, in (0, 1]; or ``budget_macs``: absolute
    MACs (takes precedence). ``convention``: what the MACs count (`uvc.CONVENTIONS` name or a
    `uvc.Convention`). ``seed``: the one seed of every random choice (the gate samples).

    ``latency``: a `uvc.LatencyTable` measured for this spec: the budget is then in
    milliseconds of that table, ``budget`` a fraction of its dense latency or ``budget_ms``
    absolute ms; every cost the solver reports (``dense_macs``, ``budget_macs``, the
    ``*_macs`` of `stats`) is then in ms (``unit`` says which), and `plan` snaps widths to the
    table's grid. Token pruning cannot be budgeted in ms (tables do not profile token counts).

    Hyper-parameters (epochs are fractional training epochs, warm-up included):

    * ``prune_heads`` / ``prune_dims`` / ``prune_neurons`` / ``skip_blocks``: what may go.
      ``prune_tokens`` (off by default): learn how many tokens each block takes (see the module
      doc and `token_keep`); ``lr_tokens``: largest step of a block's token removal per
      optimizer step, as a fraction of the patches.
    * ``budget_damping``: ρ of the augmented-Lagrangian term (ρ/2)·(R − B)² of the budget (R, B:
      MACs ratios; see the module doc).
    * ``qk_keep`` (1: all, as UVC): the fraction of each head's query/key dims every running
      MHSA keeps, ``round(qk_keep · qk_head_dim)`` (at least 1), priced from the first step and
      exported by `plan` (``LayerPlan.qk_dim``; which dims is the caller's choice, e.g. the
      Compressor's). Not with a latency table (it timed full q/k) or q/k norms.
    * ``gate_granularity``: ``"block"`` (one gate per block, as UVC) or ``"part"`` (MHSA and
      MLP gated separately). ``gate_sampler``: ``"gumbel"`` (two-class Gumbel-softmax, UVC's
      default), ``"sigmoid"`` (same distribution, one draw) or ``"softl0"`` (deterministic
      r²/(r²+ε) gate, r = max(logit, 0), UVC's ``use_gumbel=0``). ``straight_through``:
      forward the hard 0/1 sample. ``tau`` (× ``tau_decay`` per search epoch, ≥ ``tau_min``):
      sampling temperature. ``eps`` (× ``eps_decay`` per search epoch): the soft-L0 ε.
    * ``warmup_epochs``: no architecture update before this epoch (gates all on).
    * ``lr_counts``: largest step of the removal counts per optimizer step, as a fraction of
      a layer's groups (one number, or one per kind: heads, dims, neurons). The published 0.02
      was in groups per step; as a fraction it moves every kind equally fast, a whole layer in
      50 steps at most. ``hysteresis``: in groups, how far past a half-way point a continuous
      count must go before the integer count used by masks and plan follows.
    * ``gate_lr``, ``gate_momentum``, ``gating_interval`` (steps averaged per gate update),
      ``gating_weight`` (weight of the budget term in the gate gradient), ``gate_init``
      (initial log-odds of running; 2 = UVC's logit pair (−1, 1)). With z around 10–40 here,
      the published 5e-4 leaves the gates to the task gradient; about 1 lets the budget
      close gates as readily as it removes groups.
    * ``z_lr``, ``zlr_schedule``, ``zlr_gamma``: η_z = z_lr · zlr_gamma^(schedule epochs
      reached). ``z_grad_clip``: bound on |R − B| per z step. ``z_init``: initial z.
    * ``dual_lr``, ``dual_init``: learning rate and initial value of the group duals.

    Deterministic: identical inputs give identical outputs, bit for bit (every rank of a
    distributed run feeds the same all-reduced scores and stays in step).
    """

    def __init__(self, spec: ViTSpec, budget: float = 0.5, *, budget_macs: float | None = None,
                 convention: "str | Convention" = "uvc", seed: int = 0, latency: "LatencyTable | None" = None,
                 budget_ms: float | None = None, **hyper: Any) -> None:
        if not isinstance(spec, ViTSpec):
            raise TypeError(f"Solver: spec must be a ViTSpec, got {type(spec).__name__}")
        self.spec = spec
        conv = as_convention(convention)
        latency = _latency(spec, latency, budget_macs, budget_ms)
        if budget_ms is not None:
            budget_ms = _number("budget_ms", budget_ms)
            if not 0 < budget_ms <= latency.dense_ms:
                raise ValueError(f"Solver: budget_ms must lie in (0, {latency.dense_ms:.6g}] (the table's dense ms), "
                                 f"got {budget_ms}")
            budget = budget_ms / latency.dense_ms
        hyper, seed = _hyper(spec, budget, budget_macs, conv, seed, hyper)
        self._adopt(_new(spec, hyper, conv, seed, latency), hyper, conv, latency)

    def _adopt(self, core, hyper: dict, convention: Convention, latency) -> None:
        """Makes ``core`` (a `uvc._native.Solver`) this solver's, with its layouts."""
        layout = json.loads(core.layout())
        self._core, self._hyper, self.convention, self.latency = core, hyper, convention, latency
        self.unit = "MACs" if latency is None else "ms"
        self._groups = [tuple(shape) for _, shape in layout["groups"]]
        self._gate_shape = (self.spec.depth, 2)
        self._summary_layout, self._fields_layout = layout["summary"], layout["fields"]
        self._summary_size, self._fields_size = (sum(int(np.prod(shape, dtype=np.int64)) for _, shape in part)
                                                 for part in (layout["summary"], layout["fields"]))
        self._result = StepResult(*(np.ones(shape) for shape in self._groups))
        self.dense_macs = float(self._summary()["dense_macs"])

    @property
    def hyper(self) -> dict:
        """The hyper-parameters in use (``budget`` as a fraction of the dense MACs)."""
        return dict(self._hyper)

    @property
    def budget_macs(self) -> float:
        """The budget in MACs."""
        return self._hyper["budget"] * self.dense_macs

    def sample_gates(self, epoch: float) -> np.ndarray:
        """This step's keep weight of each block's MHSA part (column 0) and MLP part (column 1),
        float64 (depth, 2): a straight-through sample during search (both columns equal with
        ``gate_granularity="block"``), all ones during warm-up or without gates. The next
        `step` backpropagates its ``gate_grad`` through this draw."""
        gates = np.empty(self._gate_shape)
        self._core.sample_gates(epoch, gates)
        return gates

    def step(self, head_scores: np.ndarray, dim_scores: np.ndarray, neuron_scores: np.ndarray,
             gate_grad: np.ndarray | None = None, *, lr: float, epoch: float,
             token_scores: np.ndarray | None = None) -> StepResult:
        """One solver step after one optimizer step.

        ``head_scores`` (depth, heads), ``dim_scores`` (depth, heads, v_head_dim),
        ``neuron_scores`` (depth, mlp_hidden): float64 squared norms of the ``attn.proj`` input
        columns of each head / of each column, and of each ``mlp.fc2`` input column.
        ``gate_grad``: float64 (depth, 2), d(task loss)/d(the `sample_gates` output this
        step's forward used), or None. ``lr``: the model optimizer's learning rate η_W (for the
        proximal shrink). ``epoch``: fractional epoch.

        ``token_scores`` (read with ``prune_tokens``): float64 (depth, num_tokens), row l the
        class token's attention probabilities in block l (without a class token: the attention
        each token receives, averaged over the queries; averaged over its kept heads and the
        batch) over the tokens that entered it in this step's forward, prefix tokens first. Only
        entries ``prefix_tokens ≤ j < token_keep()[l]`` are read, and their order does not matter
        (LeastSum selects by value): per image sorted descending then averaged (what
        `uvc.torch.Compressor` passes: the attention of the j-th most attended token) or raw
        positions both work. None counts every token alike.

        A refused step (bad scores or arguments) raises and changes nothing.
        """
        r = self._result
        self._core.step(head_scores, dim_scores, neuron_scores, gate_grad, token_scores, lr, epoch,
                        r.head_factor, r.dim_factor, r.neuron_factor)
        return r

    def masks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keep masks (1 = kept), float64: heads (depth, heads), value dims (depth, heads,
        v_head_dim; all 0 in a removed head), neurons (depth, mlp_hidden), from the current
        integer counts and the scores of the last step. All ones before the search moves."""
        out = tuple(np.empty(shape) for shape in self._groups)
        self._core.masks(*out)
        return out

    def _summary(self) -> dict[str, np.ndarray]:
        """The core's summary by name (gate probabilities and decisions, kept counts, MACs, z)."""
        flat = np.empty(self._summary_size)
        self._core.summary(flat)
        return _unpack(flat, self._summary_layout)

    def gate_decisions(self) -> np.ndarray:
        """Hard decisions, bool (depth, 2): whether each block's MHSA / MLP part runs (the run
        logit beats the skip logit; with a latency table, after the first search step, also
        not a part the plan's budget trim skips under the last scores). What eval mode and the
        exported plan use."""
        return self._summary()["gates_on"] == 1

    def expected_macs(self) -> float:
        """Expected MACs under the current state: continuous counts and gate probabilities."""
        return float(self._summary()["expected_macs"])

    def token_keep(self) -> np.ndarray:
        """Tokens entering each block, int64 (depth,), prefix tokens included: what the masked
        model runs and `plan` exports. ``token_keep()[0]`` is ``spec.num_tokens``; block l drops
        tokens after its MHSA when ``token_keep()[l + 1] < token_keep()[l]`` (never after a block
        whose MHSA is off by `gate_decisions`, never below prefix + 2). All tokens without
        ``prune_tokens`` or before the search moves."""
        return self._summary()["tokens"].astype(np.int64)

    def plan(self, round_to: int = 1, *, fit: bool = False, qk_scores: np.ndarray | None = None) -> ArchPlan:
        """The architecture to export: block parts by `gate_decisions`, the kept heads, value
        dims (the same number in every kept head of a layer, the highest-scoring ones per head)
        and neurons by the integer counts and the last scores, tokens by `token_keep`.

        ``round_to`` > 1 rounds every layer's value-dim and MLP width to a multiple of it, then
        trims widths greedily (most MACs saved per unit of score lost) until the plan meets
        the budget. With a latency table widths snap to the table's grid the same way
        (``round_to`` must stay 1): every width the plan has was measured; and where narrowing
        buys less time per unit of score lost than skipping (a table flat in width, as a CPU at
        batch 1), the trim skips block parts instead (never a class-token model's last MHSA;
        training masks, sampled gates and `gate_decisions` follow the same skips).

        ``fit=True`` fits the plan to the budget from both sides: the same trim also at
        ``round_to`` 1 (one value dim per kept head or one neuron a step), then the reverse,
        widening while a step stays within the budget (most score gained per MAC, or ms, added;
        heads and block parts stay). A search that stopped short of the budget, or past it,
        thus exports a plan that spends it; that plan differs from the training masks where it
        trimmed or filled. The trim and the fill move only the kinds the search prunes
        (``prune_dims``, ``prune_neurons``): a search that prunes neither can end over the
        budget, which the plan's cost then shows.

        With ``qk_keep`` < 1 every kept head keeps ``LayerPlan.qk_dim`` query/key dims: the
        highest-scoring of ``qk_scores`` (depth, num_heads, qk_head_dim; ties to the lower
        index), or without it the first ones."""
        if not isinstance(fit, bool):
            raise TypeError(f"Solver.plan: fit must be a bool, got {type(fit).__name__}")
        if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral):
            raise TypeError(f"Solver.plan: round_to must be an int, got {type(round_to).__name__}")
        if not 1 <= round_to <= 2**20:
            raise ValueError(f"Solver.plan: round_to must be an int in [1, 2**20], got {round_to}")
        counts = np.empty((self.spec.depth, len(PLAN_ROW)), dtype=np.int64)
        heads, dims, neurons = (np.empty(shape) for shape in self._groups)
        self._core.plan(int(round_to), int(fit), counts, heads, dims, neurons)
        col = {name: k for k, name in enumerate(PLAN_ROW)}
        s = self.spec
        if qk_scores is not None:
            qk_scores = np.asarray(qk_scores, dtype=np.float64)
            if qk_scores.shape != (s.depth, s.num_heads, s.qk_head_dim) or not np.all(np.isfinite(qk_scores)):
                raise ValueError(f"Solver.plan: qk_scores must be finite, of shape ({s.depth}, {s.num_heads}, "
                                 f"{s.qk_head_dim}), got shape {qk_scores.shape}")
        layers = []
        for l, row in enumerate(counts.tolist()):
            kept = np.flatnonzero(heads[l]).tolist()
            width = row[col["qk_dim"]]
            if qk_scores is None:
                qk = [tuple(range(width))] * len(kept)
            else:
                qk = [tuple(highest(qk_scores[l, h], width).tolist()) for h in kept]
            layers.append(LayerPlan(heads=tuple(kept), v_index=tuple(tuple(np.flatnonzero(dims[l, h]).tolist())
                                                                       for h in kept),
                                    neurons=tuple(np.flatnonzero(neurons[l]).tolist()), tokens=row[col["tokens"]],
                                    attn=bool(row[col["attn"]]), mlp=bool(row[col["mlp"]]), qk_index=tuple(qk)))
        return ArchPlan(self.spec, tuple(layers))

    def stats(self) -> dict:
        """Plain floats and lists for logging: z, expected and plan MACs (ms with a latency
        table; ``unit`` says which) and their ratios to the dense model, the kept heads / value dims / neurons and the tokens entering each layer,
        gate probabilities."""
        s = self._summary()
        dense = float(s["dense_macs"])
        out = {"z": float(s["z"]), "unit": self.unit}
        for key in ("expected", "plan", "budget"):
            macs = float(s[f"{key}_macs"])
            out[f"{key}_macs"], out[f"{key}_ratio"] = macs, macs / dense
        out.update({k: s[k].astype(int).tolist() for k in ("kept_heads", "kept_v_dims", "kept_neurons", "tokens")})
        out.update(gate_probs=s["gate_probs"].tolist(), gates_on=s["gates_on"].astype(bool).tolist(),
                   search_steps=int(s["search_steps"]))
        return out

    def state_fields(self) -> dict[str, np.ndarray]:
        """The solver state by the core's field names (removal counts, duals, z, gate logits,
        …), float64 copies: for inspection only; `state_dict` is what resumes a run."""
        flat = np.empty(self._fields_size)
        self._core.fields(flat)
        return _unpack(flat, self._fields_layout)

    def state_dict(self) -> dict:
        """Everything needed to resume: spec, convention, hyper-parameters, and the core's
        versioned byte string of the solver state and the last scores (base64 text).
        JSON-serialisable; identical on every rank of a distributed run."""
        return {
            "format": SOLVER_FORMAT, "spec": self.spec.to_dict(), "convention": dataclasses.asdict(self.convention),
            "hyper": {k: list(v) if isinstance(v, tuple) else v for k, v in self._hyper.items()},
            "state": encode_state(self._core.save()),
            "latency": None if self.latency is None else self.latency.to_dict(),
        }

    def load_state_dict(self, d: dict) -> None:
        """Restores a `state_dict` bit for bit, hyper-parameters and convention included; the
        spec must be this solver's. The core checks every value; on error nothing changes."""
        fn = "Solver.load_state_dict"
        _check_state_dict(fn, d)
        if ViTSpec.from_dict(d["spec"]) != self.spec:
            raise ValueError(f"{fn}: the state was saved for a different spec")
        saved = d.get("latency")
        if saved != (None if self.latency is None else self.latency.to_dict()):
            raise ValueError(f"{fn}: the state was saved with "
                             f"{'a MACs budget' if saved is None else 'another latency table'}, this solver has "
                             f"{'a MACs budget' if self.latency is None else 'the table ' + self.latency.source}")
        hyper = dict(d["hyper"])
        budget = hyper.pop("budget")
        conv = Convention(**d["convention"])
        hyper, _ = _hyper(self.spec, budget, None, conv, 0, hyper)
        core = _new(self.spec, hyper, conv, 0, self.latency)
        try:
            core.load(decode_state(fn, d["state"]))
        except ValueError as e:
            raise ValueError(f"{fn}: {e}") from None
        self._adopt(core, hyper, conv, self.latency)

    @classmethod
    def from_state_dict(cls, d: dict) -> "Solver":
        """A solver rebuilt from a `state_dict` alone."""
        _check_state_dict("Solver.from_state_dict", d)
        spec = ViTSpec.from_dict(d["spec"])
        hyper = dict(d["hyper"])
        budget = hyper.pop("budget")
        latency = None if d.get("latency") is None else LatencyTable(d["latency"], source="the saved state")
        solver = cls(spec, budget, convention=Convention(**d["convention"]), latency=latency, **hyper)
        solver.load_state_dict(d)
        return solver


_STATE_DICT_KEYS = ("format", "spec", "convention", "hyper", "state")


def _check_state_dict(fn: str, d: Any) -> None:
    """The keys and container types of a `Solver.state_dict` (the values are checked where read)."""
    check_format(fn, d, SOLVER_FORMAT, _OLD_FORMATS)
    missing = [k for k in _STATE_DICT_KEYS if k not in d]
    if missing:
        raise ValueError(f"{fn}: missing keys {missing}; expected keys {list(_STATE_DICT_KEYS)}")
    for key in ("spec", "convention", "hyper"):
        if not isinstance(d[key], dict):
            raise TypeError(f"{fn}: {key} must be a dict, got {type(d[key]).__name__}")
    if "budget" not in d["hyper"]:
        raise ValueError(f"{fn}: hyper: missing key 'budget'; expected keys {['budget', *sorted(DEFAULTS)]}")
