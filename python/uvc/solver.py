"""`Solver`: UVC's primal-dual architecture search (REFERENCE.md §2–4) on numpy arrays.

The mathematics runs in the Swift core (`uvc._native`); this module holds the state arrays
and shapes results. No torch: scores, gate gradients and factors are float64 numpy arrays.

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
import numbers
from typing import Any, Iterable

import numpy as np

from . import _native
from .cost import Convention, as_convention, count
from .plan import ArchPlan, LayerPlan
from .spec import ViTSpec

__all__ = ["Solver", "StepResult", "SOLVER_FORMAT"]

SOLVER_FORMAT = "uvc.solver/2"

# Order of SolverConfig.Field in the core (lr_counts fills three slots).
_CONFIG_FIELDS = ("budget", "prune_heads", "prune_dims", "prune_neurons", "skip_blocks", "gate_granularity",
                  "gate_sampler", "straight_through", "warmup_epochs", "lr_heads", "lr_dims", "lr_neurons",
                  "hysteresis", "gate_lr", "gating_weight", "gating_interval", "gate_momentum", "gate_init", "z_lr",
                  "zlr_gamma", "z_grad_clip", "z_init", "dual_lr", "dual_init", "tau", "tau_decay", "tau_min",
                  "eps", "eps_decay", "prune_tokens", "lr_tokens", "budget_damping")
# Order of SolverState.Field in the core.
_STATE_FIELDS = ("removal", "committed", "duals", "z", "logits", "velocity", "gradient_sum", "accumulated_steps",
                 "sample_slope", "sample_fresh", "hints", "search_steps", "epoch", "token_removal", "token_committed",
                 "token_duals")
_GRANULARITIES = ("block", "part")
_SAMPLERS = ("gumbel", "sigmoid", "softl0")
_FLAGS = ("prune_heads", "prune_dims", "prune_neurons", "prune_tokens", "skip_blocks", "straight_through")

# The published DeiT-Tiny run where it defines a value (REFERENCE.md §4); see the module docstring.
DEFAULTS: dict[str, Any] = dict(
    prune_heads=True, prune_dims=True, prune_neurons=True, prune_tokens=False, skip_blocks=True,
    gate_granularity="block", gate_sampler="gumbel", straight_through=True, warmup_epochs=5.0, lr_counts=0.02,
    lr_tokens=0.02, budget_damping=10.0, hysteresis=0.3,
    gate_lr=0.1, gating_weight=5e-4, gating_interval=50, gate_momentum=0.9, gate_init=2.0, z_lr=1.0,
    zlr_schedule=(1, 5, 9, 13, 17), zlr_gamma=1.5, z_grad_clip=0.5, z_init=0.0, dual_lr=1e-4, dual_init=1.0,
    tau=0.5, tau_decay=1.0, tau_min=0.05, eps=0.1, eps_decay=0.92)


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


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Solver: {name} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        got = f"an int of {int(value).bit_length()} bits" if isinstance(value, numbers.Integral) else "one too large"
        raise ValueError(f"Solver: {name} must be a number that fits in a float64, got {got}") from None


def _require_keys(fn: str, d: dict, keys: tuple[str, ...], what: str = "") -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{fn}: {what}missing keys {missing}; expected keys {list(keys)}")


def _dict_field(fn: str, d: dict, key: str) -> dict:
    if not isinstance(d[key], dict):
        raise TypeError(f"{fn}: {key} must be a dict, got {type(d[key]).__name__}")
    return d[key]


_STATE_DICT_KEYS = ("format", "spec", "convention", "hyper", "state", "rng", "last_scores")


def _hyper(spec: ViTSpec, budget: Any, budget_macs: Any, convention: Convention, seed: Any,
           options: dict) -> tuple[dict, int]:
    """Checks types and names (ranges are the core's business); returns (hyper, seed)."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"Solver: unknown hyper-parameters {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    hyper = dict(DEFAULTS, **options)
    for name in _FLAGS:
        if not isinstance(hyper[name], (bool, np.bool_)):
            raise TypeError(f"Solver: {name} must be a bool, got {type(hyper[name]).__name__}")
        hyper[name] = bool(hyper[name])
    for name, choices in (("gate_granularity", _GRANULARITIES), ("gate_sampler", _SAMPLERS)):
        if hyper[name] not in choices:
            raise ValueError(f"Solver: {name} must be one of {choices}, got {hyper[name]!r}")
    lr = hyper["lr_counts"]
    lr = tuple(lr) if isinstance(lr, (tuple, list, np.ndarray)) else (lr,) * 3
    if len(lr) != 3:
        raise ValueError(f"Solver: lr_counts must be a number or 3 numbers (heads, dims, neurons), got {len(lr)}")
    hyper["lr_counts"] = tuple(_number("lr_counts", v) for v in lr)
    if isinstance(hyper["zlr_schedule"], (str, bytes)) or not isinstance(hyper["zlr_schedule"], Iterable):
        raise TypeError("Solver: zlr_schedule must be a sequence of epochs")
    hyper["zlr_schedule"] = tuple(_number("zlr_schedule", e) for e in hyper["zlr_schedule"])
    interval = hyper["gating_interval"]
    if isinstance(interval, bool) or not isinstance(interval, numbers.Integral):
        raise TypeError(f"Solver: gating_interval must be an int, got {type(interval).__name__}")
    for name, value in hyper.items():
        if name not in _FLAGS and name not in ("gate_granularity", "gate_sampler", "lr_counts", "zlr_schedule"):
            hyper[name] = _number(name, value)
    hyper["gating_interval"] = int(interval)
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


def _encode_config(hyper: dict) -> tuple[np.ndarray, np.ndarray]:
    values = dict(hyper, gate_granularity=_GRANULARITIES.index(hyper["gate_granularity"]),
                  gate_sampler=_SAMPLERS.index(hyper["gate_sampler"]))
    values["lr_heads"], values["lr_dims"], values["lr_neurons"] = hyper["lr_counts"]
    config = np.array([float(values[name]) for name in _CONFIG_FIELDS], dtype=np.float64)
    schedule = np.array(hyper["zlr_schedule"], dtype=np.float64).reshape(-1)
    return config, schedule


class _Arrays:
    """The arrays of one solver configuration: encoded config, state, and the buffers the hot
    path reuses (results, last scores)."""

    def __init__(self, spec: ViTSpec, hyper: dict, convention: Convention) -> None:
        self.hyper, self.convention = hyper, convention
        config, schedule = _encode_config(hyper)
        self.fixed = (spec.encoded, convention.encoded, config, schedule)
        sizes = np.empty(len(_STATE_FIELDS), dtype=np.int64)
        try:
            _native.solver_sizes(*self.fixed, sizes)  # the core checks every hyper-parameter's range
        except ValueError as e:
            raise ValueError(f"Solver: {str(e).split('(): ', 1)[-1]}") from None
        self.sizes = dict(zip(_STATE_FIELDS, sizes.tolist()))
        self.state = np.zeros(int(sizes.sum()), dtype=np.float64)
        self.words = np.zeros(4, dtype=np.int64)
        shapes = ((spec.depth, spec.num_heads), (spec.depth, spec.num_heads, spec.v_head_dim),
                  (spec.depth, spec.mlp_hidden))
        # The last step's scores, and spares the next step checks and copies its scores into
        # (they become the last scores only if that step succeeds).
        self.last = tuple(np.zeros(shape) for shape in shapes)
        self.spare = tuple(np.zeros(shape) for shape in shapes)
        self.result = StepResult(*(np.ones(shape) for shape in shapes))
        self.no_grad = np.empty(0, dtype=np.float64)

    def fields(self) -> dict[str, np.ndarray]:
        """Views of the state by field name."""
        out, at = {}, 0
        for name in _STATE_FIELDS:
            out[name] = self.state[at:at + self.sizes[name]]
            at += self.sizes[name]
        return out


def _summary(spec: ViTSpec, arrays: _Arrays) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gate probabilities and decisions (depth, 2), kept counts (4, depth: heads, value dims,
    neurons, tokens entering the block), and the expected, plan, dense and budget MACs."""
    d = spec.depth
    probs, decisions, kept, values = np.empty((d, 2)), np.empty((d, 2)), np.empty((4, d)), np.empty(4)
    _native.solver_summary(*arrays.fixed, arrays.state, arrays.words, probs, decisions, kept, values)
    return probs, decisions, kept, values


class Solver:
    """UVC's solver for one `ViTSpec`: which heads, value dims, MLP neurons and block parts (and
    optionally how many tokens per block) to keep so that the model costs ``budget`` × its
    dense MACs.

    ``budget``: fraction of the dense MACs to keep, in (0, 1]; or ``budget_macs``: absolute
    MACs (takes precedence). ``convention``: what the MACs count (`uvc.CONVENTIONS` name or a
    `uvc.Convention`). ``seed``: the one seed of every random choice (the gate samples).

    Hyper-parameters (epochs are fractional training epochs, warm-up included):

    * ``prune_heads`` / ``prune_dims`` / ``prune_neurons`` / ``skip_blocks``: what may go.
      ``prune_tokens`` (off by default): learn how many tokens each block takes (see the module
      doc and `token_keep`); ``lr_tokens``: largest step of a block's token removal per
      optimizer step, as a fraction of the patches.
    * ``budget_damping``: ρ of the augmented-Lagrangian term (ρ/2)·(R − B)² of the budget (R, B:
      MACs ratios; see the module doc).
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
                 convention: "str | Convention" = "uvc", seed: int = 0, **hyper: Any) -> None:
        if not isinstance(spec, ViTSpec):
            raise TypeError(f"Solver: spec must be a ViTSpec, got {type(spec).__name__}")
        self.spec = spec
        conv = as_convention(convention)
        hyper, seed = _hyper(spec, budget, budget_macs, conv, seed, hyper)
        arrays = _Arrays(spec, hyper, conv)
        seed_arr = np.array([seed], dtype=np.uint64).view(np.int64)
        try:
            _native.solver_init(*arrays.fixed, seed_arr, arrays.state, arrays.words, np.empty(2))
        except ValueError as e:  # an unreachable budget
            raise ValueError(f"Solver: {str(e).split('(): ', 1)[-1]}") from None
        self._adopt(arrays)

    def _adopt(self, arrays: "_Arrays") -> None:
        """Makes ``arrays`` this solver's once the core accepts their state (the hot path
        reads them through attributes)."""
        dense = float(_summary(self.spec, arrays)[3][2])
        self._arrays = arrays
        self._hyper, self.convention = arrays.hyper, arrays.convention
        self._fixed, self._state, self._words = arrays.fixed, arrays.state, arrays.words
        self._last, self._spare, self._result, self._no_grad = arrays.last, arrays.spare, arrays.result, arrays.no_grad
        self.dense_macs = dense

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
        gates = np.empty((self.spec.depth, 2), dtype=np.float64)
        _native.solver_sample_gates(*self._fixed, self._state, self._words, gates, epoch)
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
        class token's attention probabilities in block l (averaged over its kept heads and the
        batch) over the tokens that entered it in this step's forward, prefix tokens first. Only
        entries ``prefix_tokens ≤ j < token_keep()[l]`` are read, and their order does not matter
        (LeastSum selects by value): per image sorted descending then averaged (what
        `uvc.torch.Compressor` passes: the attention of the j-th most attended token) or raw
        positions both work. None counts every token alike.
        """
        r, spare = self._result, self._spare
        _native.solver_step(*self._fixed, self._state, self._words, head_scores, dim_scores, neuron_scores,
                            self._no_grad if gate_grad is None else gate_grad, r.head_factor, r.dim_factor,
                            r.neuron_factor, *spare, self._no_grad if token_scores is None else token_scores,
                            lr, epoch)
        self._last, self._spare = spare, self._last
        return r

    def masks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keep masks (1 = kept), float64: heads (depth, heads), value dims (depth, heads,
        v_head_dim; all 0 in a removed head), neurons (depth, mlp_hidden), from the current
        integer counts and the scores of the last step. All ones before the search moves."""
        out = tuple(np.empty_like(a) for a in self._last)
        _native.solver_masks(*self._fixed, self._state, self._words, *self._last, *out)
        return out

    def _summary(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return _summary(self.spec, self._arrays)

    def gate_decisions(self) -> np.ndarray:
        """Hard decisions, bool (depth, 2): whether each block's MHSA / MLP part runs (the run
        logit beats the skip logit). What eval mode and the exported plan use."""
        return self._summary()[1] == 1

    def expected_macs(self) -> float:
        """Expected MACs under the current state: continuous counts and gate probabilities."""
        return float(self._summary()[3][0])

    def token_keep(self) -> np.ndarray:
        """Tokens entering each block, int64 (depth,), prefix tokens included: what the masked
        model runs and `plan` exports. ``token_keep()[0]`` is ``spec.num_tokens``; block l drops
        tokens after its MHSA when ``token_keep()[l + 1] < token_keep()[l]`` (never after a block
        whose MHSA is off by `gate_decisions`, never below prefix + 2). All tokens without
        ``prune_tokens`` or before the search moves."""
        return self._summary()[2][3].astype(np.int64)

    def plan(self, round_to: int = 1) -> ArchPlan:
        """The architecture to export: block parts by `gate_decisions`, the kept heads, value
        dims (the same number in every kept head of a layer, the highest-scoring ones per head)
        and neurons by the integer counts and the last scores, tokens by `token_keep`.

        ``round_to`` > 1 rounds every layer's value-dim and MLP width to a multiple of it, then
        trims widths greedily (most MACs saved per unit of score lost) until the plan meets
        the budget."""
        if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral):
            raise TypeError(f"Solver.plan: round_to must be an int, got {type(round_to).__name__}")
        if not 1 <= round_to <= 2**20:
            raise ValueError(f"Solver.plan: round_to must be an int in [1, 2**20], got {round_to}")
        counts = np.empty((self.spec.depth, 6), dtype=np.int64)
        heads, dims, neurons = (np.empty_like(a) for a in self._last)
        _native.solver_plan(*self._fixed, self._state, self._words, *self._last, counts, heads, dims, neurons,
                            float(round_to))
        layers = []
        for l, row in enumerate(counts.tolist()):
            kept = np.flatnonzero(heads[l]).tolist()
            layers.append(LayerPlan(heads=tuple(kept), v_index=tuple(tuple(np.flatnonzero(dims[l, h]).tolist())
                                                                       for h in kept),
                                    neurons=tuple(np.flatnonzero(neurons[l]).tolist()), tokens=row[5],
                                    attn=bool(row[3]), mlp=bool(row[4])))
        return ArchPlan(self.spec, tuple(layers))

    def stats(self) -> dict:
        """Plain floats and lists for logging: z, expected and plan MACs and their ratios to the
        dense model, the kept heads / value dims / neurons and the tokens entering each layer,
        gate probabilities."""
        probs, decisions, kept, values = self._summary()
        state = self._fields()
        return {
            "z": float(state["z"][0]),
            "expected_macs": float(values[0]), "expected_ratio": float(values[0] / values[2]),
            "plan_macs": float(values[1]), "plan_ratio": float(values[1] / values[2]),
            "budget_macs": float(values[3]), "budget_ratio": float(values[3] / values[2]),
            "kept_heads": kept[0].astype(int).tolist(), "kept_v_dims": kept[1].astype(int).tolist(),
            "kept_neurons": kept[2].astype(int).tolist(), "tokens": kept[3].astype(int).tolist(),
            "gate_probs": probs.tolist(), "gates_on": decisions.astype(bool).tolist(),
            "search_steps": int(state["search_steps"][0]),
        }

    def _fields(self) -> dict[str, np.ndarray]:
        return self._arrays.fields()

    def state_dict(self) -> dict:
        """Everything needed to resume: spec, hyper-parameters, solver state, the generator's
        words and the last scores. JSON-serialisable (lists, floats, ints, strings)."""
        return {
            "format": SOLVER_FORMAT, "spec": self.spec.to_dict(), "convention": dataclasses.asdict(self.convention),
            "hyper": {k: list(v) if isinstance(v, tuple) else v for k, v in self._hyper.items()},
            "state": {k: v.tolist() for k, v in self._fields().items()},
            "rng": self._words.tolist(),
            "last_scores": [a.tolist() for a in self._last],
        }

    def load_state_dict(self, d: dict) -> None:
        """Restores a `state_dict` (lists or numpy arrays) bit for bit, hyper-parameters and
        convention included; the spec must be this solver's. On error nothing changes."""
        fn = "Solver.load_state_dict"
        _check_state_dict(fn, d)
        if ViTSpec.from_dict(d["spec"]) != self.spec:
            raise ValueError("Solver.load_state_dict: the state was saved for a different spec")
        hyper = dict(d["hyper"])
        budget = hyper.pop("budget")
        conv = Convention(**d["convention"])
        hyper, _ = _hyper(self.spec, budget, None, conv, 0, hyper)
        arrays = _Arrays(self.spec, hyper, conv)
        state = d["state"]
        _require_keys(fn, state, _STATE_FIELDS, "state: ")
        for name, view in arrays.fields().items():
            values = _float_array(fn, f"state field {name!r}", state[name]).reshape(-1)
            if values.size != view.size:
                raise ValueError(f"Solver.load_state_dict: state field {name!r} has {values.size} values, "
                                 f"expected {view.size}")
            view[...] = values
        rng = d["rng"]
        if (isinstance(rng, (str, bytes)) or not isinstance(rng, (list, tuple, np.ndarray)) or len(rng) != 4
                or any(isinstance(w, bool) or not isinstance(w, numbers.Integral) or not -2**63 <= w < 2**63
                       for w in rng)):
            raise ValueError(f"Solver.load_state_dict: rng must be 4 ints in int64, got {rng!r:.120}")
        arrays.words[:] = np.asarray(rng, dtype=np.int64).reshape(4)
        last = d["last_scores"]
        if isinstance(last, (str, bytes, dict)) or not isinstance(last, (list, tuple)) or len(last) != len(arrays.last):
            raise ValueError(f"Solver.load_state_dict: last_scores must be a list of {len(arrays.last)} arrays "
                             "(heads, dims, neurons)")
        for i, (dst, src) in enumerate(zip(arrays.last, last)):
            values = _float_array(fn, f"last_scores[{i}]", src)
            if values.size != dst.size:
                raise ValueError(f"Solver.load_state_dict: last_scores[{i}] has {values.size} values, "
                                 f"expected shape {dst.shape}")
            dst[...] = values.reshape(dst.shape)
        self._adopt(arrays)

    @classmethod
    def from_state_dict(cls, d: dict) -> "Solver":
        """A solver rebuilt from a `state_dict` alone."""
        _check_state_dict("Solver.from_state_dict", d)
        spec = ViTSpec.from_dict(d["spec"])
        hyper = dict(d["hyper"])
        budget = hyper.pop("budget")
        solver = cls(spec, budget, convention=Convention(**d["convention"]), **hyper)
        solver.load_state_dict(d)
        return solver


def _check_state_dict(fn: str, d: Any) -> None:
    """The keys and container types of a `Solver.state_dict` (the values are checked where read)."""
    if not isinstance(d, dict) or d.get("format") != SOLVER_FORMAT:
        got = f"format {d.get('format')!r}" if isinstance(d, dict) else f"a {type(d).__name__}"
        raise ValueError(f"{fn}: expected a dict with format {SOLVER_FORMAT!r}, got {got}")
    _require_keys(fn, d, _STATE_DICT_KEYS)
    for key in ("spec", "convention", "hyper", "state"):
        _dict_field(fn, d, key)
    if "budget" not in d["hyper"]:
        raise ValueError(f"{fn}: hyper: missing key 'budget'; expected keys {['budget', *sorted(DEFAULTS)]}")


def _float_array(fn: str, what: str, value: Any) -> np.ndarray:
    """``value`` (nested lists or an array of numbers) as float64."""
    if isinstance(value, (str, bytes, dict)):
        raise TypeError(f"{fn}: {what} must be numbers, got {type(value).__name__}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise ValueError(f"{fn}: {what} holds a number too large for float64") from None
    return arr
