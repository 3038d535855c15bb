#!/usr/bin/env python3
"""Mutation fuzzer for uvc's numpy API and its native extension `uvc._native`.

Every input is a call built from a valid seed call (small `ViTSpec`s and DeiT-Tiny; solver
states taken along real trajectories) and then, unless it is a seed call, mutated: wrong
dtypes, shapes, layouts and buffer exporters, special and bit-flipped values, wrong argument
counts and types, outputs aliasing other arguments, out-of-range scalars, damaged saved states
(truncated, bit-flipped, another tag or format version, another spec's or object's state,
other buffer types), flipped fields and base64 text of state dicts, and "edge" calls whose
free sizes sit at their limits (empty columns, huge zero-size arrays, extreme specs).

The targets: every module function of `uvc._native`, its two types' constructors
(``native.Solver``, ``native.GroupSampler``) and each of their methods (``native.Solver.step``,
...: the call runs on a live object built from a seed solver / sampler state; its mutations
also call the method on an object of another type, pass the object itself, or pass a number
whose conversion calls the busy object), two-thread runs (``threads.*``), and the numpy API
(``api.*``).

Outcomes: ``TypeError`` / ``ValueError`` are what a bad input must raise; returning is fine
too. Anything else is a failure: another exception type, a crash (the process dies, e.g. by
a signal) or a hang (no progress for ``--hang-timeout`` seconds). A seed call that raises at
all is a failure as well. A call on an object (native or the numpy API's wrapper) is checked
afterwards (``use_after``): one that raised must leave ``save()``'s bytes as they were, and
then a valid call on the object (summary, step, sample, ...) and ``load(save())`` must
succeed; an accepted ``load(b)`` must make ``save()`` return ``b``. ``threads.shared`` runs
two threads calling methods of ONE object concurrently: each call returns or raises
RuntimeError (busy; counted in the ``busy`` column); ``threads.separate`` gives each thread
its own object in the same state running the same calls: nothing may raise and both must end
in the same state.

The loop runs in a forked child with a memory limit; the parent watches the index of the
input in flight, and when the child dies or stalls it records that input, starts a new child
after it and carries on. Input ``i`` depends on ``(seed, i)`` only, so any input can be
replayed alone::

    python benchmarks/fuzz_native.py --seed 0 --replay 123456     # runs it in this process

Usage::

    python benchmarks/fuzz_native.py [--inputs N] [--seed S] [--smoke]

prints a table per function and writes benchmarks/results/fuzz_native.json (``--smoke``:
3000 inputs, results/fuzz_native_smoke.json); the exit code is 1 when there are failures.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import array
import base64
import ctypes
import dataclasses
import decimal
import faulthandler
import fractions
import json
import math
import multiprocessing
import random
import re
import resource
import struct
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

import uvc
from uvc import _core, _native, usdc
from uvc.cost import GLOBAL_COMPONENTS, LAYER_COMPONENTS, RELAXED_FIELDS
from uvc.plan import PLAN_ROW, ArchPlan

# Rows of a relaxed input, and the token row's index.
_FIELDS, _TOKENS, _QK = len(RELAXED_FIELDS), RELAXED_FIELDS.index("tokens"), RELAXED_FIELDS.index("qk_dim")

RESULTS = Path(__file__).resolve().parent / "results"
EXPECTED = (TypeError, ValueError)

# --------------------------------------------------------------------------------------------
# Signatures of the native calls (the argument names of Sources/UVCExports/Exports.swift): the
# module functions, the two types' constructors ("Solver", "GroupSampler") and their methods
# ("Solver.step", ...). kind: 'q' int64 array, 'd' float64 array, 'n' float64 array or None,
# 's' a real (float or int), 'i' a Python int, 'b' bytes; writable: an output.

_GROUPS_OUT = lambda prefix: [(f"head_{prefix}", "d", True), (f"dim_{prefix}", "d", True),  # noqa: E731
                              (f"neuron_{prefix}", "d", True)]
_COST_MODEL = [("spec", "q", False), ("convention", "d", False)]
_LATENCY = [("heads", "q", False), ("v_dims", "q", False), ("neurons", "q", False), ("tokens", "q", False),
            ("attention_ms", "d", False), ("mlp_ms", "d", False), ("drop_ms", "d", False), ("fixed_ms", "s", False)]
NATIVE_SIGS: dict[str, list[tuple[str, str, bool]]] = {
    "layouts": [],
    "cost_exact": _COST_MODEL + [("plan", "q", False), ("layers_out", "d", True), ("globals_out", "d", True)],
    "cost_expected": _COST_MODEL + [("x", "d", False), ("out", "d", True)],
    "group_gates": [("logits", "d", False), ("groups", "q", False), ("noise", "d", False), ("tau", "s", False),
                    ("straight_through", "s", False), ("gates_out", "d", True), ("probs_out", "d", True)],
    "group_gates_backward": [("logits", "d", False), ("groups", "q", False), ("noise", "d", False),
                             ("gate_grad", "d", False), ("prob_grad", "d", False), ("tau", "s", False),
                             ("grad_out", "d", True)],
    "resource_loss": _COST_MODEL + [(n, "d", False) for n in ("head_probs", "neuron_probs", "part_probs", "rates",
                                                              "gate_costs", "gate_probs")]
                     + [("target", "s", False), ("gamma", "s", False), ("dual", "s", False), ("values_out", "d", True)]
                     + [(n, "d", True) for n in ("head_grad", "neuron_grad", "part_grad", "rate_grad", "gate_costs_grad",
                                                 "gate_probs_grad")]
                     + [(name, "n", False) for name, _, _ in _LATENCY[:-1]] + [("fixed_ms", "s", False)],
    "gram_accumulate": [("x", "d", False), ("y", "d", False), ("xtx", "d", True), ("xty", "d", True)],
    "ridge_solve": [("xtx", "d", False), ("xty", "d", False), ("kept", "q", False), ("ridge", "s", False),
                    ("out", "d", True)],
    "latency_exact": [("spec", "q", False)] + _LATENCY + [("plan", "q", False), ("layers_out", "d", True)],
    "latency_expected": [("spec", "q", False)] + _LATENCY + [("x", "d", False), ("out", "d", True)],
    "Solver": _COST_MODEL + [("config", "d", False), ("zlr_schedule", "d", False), ("seed", "i", False)]
              + [(name, "n", False) for name, _, _ in _LATENCY[:-1]] + [("fixed_ms", "s", False)],
    "Solver.layout": [],
    "Solver.sample_gates": [("epoch", "s", False), ("gates_out", "d", True)],
    "Solver.step": [("head_scores", "d", False), ("dim_scores", "d", False), ("neuron_scores", "d", False),
                    ("gate_grad", "n", False), ("token_scores", "n", False), ("lr", "s", False), ("epoch", "s", False)]
                   + _GROUPS_OUT("factor"),
    "Solver.masks": _GROUPS_OUT("mask"),
    "Solver.plan": [("round_to", "i", False), ("fit", "i", False), ("counts_out", "q", True)] + _GROUPS_OUT("mask"),
    "Solver.summary": [("out", "d", True)],
    "Solver.fields": [("out", "d", True)],
    "Solver.save": [],
    "Solver.load": [("state", "b", False)],
    "GroupSampler": [("seed", "i", False)],
    "GroupSampler.group_count": [("grouping", "i", False), ("batch", "i", False)],
    "GroupSampler.sample": [("grouping", "i", False), ("groups_out", "q", True), ("sizes_out", "q", True),
                            ("noise_out", "d", True)],
    "GroupSampler.save": [],
    "GroupSampler.load": [("state", "b", False)],
}


def native_surface() -> set[str]:
    """What `uvc._native` offers: its public functions and types, and each type's methods as
    ``Type.method`` (the names NATIVE_SIGS and TARGETS must cover)."""
    out = set()
    for name in dir(_native):
        if name.startswith("_"):
            continue
        out.add(name)
        obj = getattr(_native, name)
        if isinstance(obj, type):
            out.update(f"{name}.{m}" for m in dir(obj) if not m.startswith("_"))
    return out


# --------------------------------------------------------------------------------------------
# A call: the function, its arguments and what each argument is (for the mutators).

@dataclasses.dataclass
class Slot:
    """What an argument is. kind: 'arr' (a numpy array; dtype 'q' / 'd'; out = written),
    'scalar' (a number), 'bytes' (a saved state), 'obj' (anything else; ``tag`` says what:
    spec, plan, convention, rng, int, bool, str, seq), 'json' (a dict / list tree)."""

    kind: str
    dtype: str = "d"
    out: bool = False
    tag: str = ""


@dataclasses.dataclass
class Probe:
    """How to check the object a method call runs on (a native `Solver` / `GroupSampler`, or
    the numpy API's wrapper of one). ``state()`` returns a comparable snapshot of its state
    (the core's `save()` bytes); ``follow`` are valid calls (name, fn(obj)) one of which runs on
    the object after the call. A call that raised must leave ``state()`` as it was, and the
    object must stay usable: the follow-up call and a save/load round trip must succeed."""

    obj: Any
    state: Callable[[], Any]
    follow: tuple            # (name, fn) of the follow-up call
    roundtrip: Callable[[], Any] | None = None


@dataclasses.dataclass
class Call:
    target: str
    fn: Callable
    args: list
    kwargs: dict
    slots: list            # one Slot per positional argument
    kwslots: dict          # name -> Slot
    names: list            # positional argument names
    native: bool
    mutations: list = dataclasses.field(default_factory=list)
    valid: bool = True     # an unmutated seed call
    probe: Probe | None = None
    fixed: bool = False    # built whole by its builder (thread runs): no generic mutation
    info: dict = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        return "; ".join(self.mutations) if self.mutations else "seed call (unmutated)"


def _ro(a) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------------------------
# The corpus: specs, plans, relaxed inputs, scores and solver states, all from the seed.

_CONFIG = _core.LAYOUTS["solver_config"]


def _native_args(spec: uvc.ViTSpec, hyper: dict, convention, seed: int) -> tuple:
    """The arguments of `_native.Solver` for these settings (as `uvc.solver._new` encodes them)."""
    values: list[float] = []
    for e in _CONFIG:
        v = hyper[e["name"]]
        v = e["choices"].index(v) if e["kind"] == "choice" else v
        values.extend(v if e["count"] > 1 else (v,))
    return (_ro(spec.encoded), _ro(convention.encoded), _ro(np.array(values, dtype=np.float64)),
            _ro(np.array(hyper["zlr_schedule"], dtype=np.float64).reshape(-1)),
            seed - 2 ** 64 if seed >= 2 ** 63 else seed) + (None,) * len(_LATENCY)  # a MACs budget: no latency table


@dataclasses.dataclass
class Snapshot:
    spec: uvc.ViTSpec
    traj: int              # snapshots of one trajectory share spec and config
    fixed: tuple           # `_native.Solver`'s arguments
    saved: bytes           # the core's state (`save()`) at this point
    epoch: float
    tokens: bool
    hyper: dict
    convention: Any
    state_dict: dict
    n_summary: int
    n_fields: int


def native_solver(s: Snapshot):
    """A fresh `_native.Solver` in the snapshot's state."""
    o = _native.Solver(*s.fixed)
    o.load(s.saved)
    return o


def api_solver(s: Snapshot) -> uvc.Solver:
    """A fresh `uvc.Solver` in the snapshot's state (what `from_state_dict` builds, without
    re-checking the hyper-parameters on every input)."""
    solver = uvc.Solver.__new__(uvc.Solver)
    solver.spec = s.spec
    solver._adopt(native_solver(s), dict(s.hyper), s.convention, None)
    return solver


class SpecCase:
    def __init__(self, spec: uvc.ViTSpec, g: np.random.Generator, pool: int) -> None:
        self.spec = spec
        self.enc = _ro(spec.encoded)
        d = spec.depth
        self.tokens_ok = d >= 2 and spec.prefix_tokens >= 1 and spec.num_patches >= 3
        self.arch_plans = [ArchPlan.dense(spec)] + [uvc.random_plan(spec, g, tokens=spec.prefix_tokens >= 1)
                                                  for _ in range(pool)]
        self.plans = [_ro(p.counts) for p in self.arch_plans]
        upper = uvc.cost.relaxed_inputs(spec)[:, 0]  # the dense model, row by RELAXED_FIELDS
        self.xs = [_ro(g.random((_FIELDS, d)) * upper[:, None]) for _ in range(pool)] + [_ro(np.repeat(upper[:, None], d, 1))]
        shapes = ((d, spec.num_heads), (d, spec.num_heads, spec.v_head_dim), (d, spec.mlp_hidden))
        self.shapes = shapes
        self.scores = [tuple(_ro(g.random(s) + 1e-3) for s in shapes) for _ in range(pool)]
        self.gate_grads = [_ro(g.normal(size=(d, 2)) * 1e-2) for _ in range(pool)]
        tok = g.random((pool, d, spec.num_tokens))
        self.token_scores = [_ro(t / t.sum(axis=1, keepdims=True)) for t in tok]
        self.divisors = [k for k in range(1, spec.mlp_hidden + 1) if spec.mlp_hidden % k == 0]
        self.snaps: list[Snapshot] = []

    def add_trajectory(self, g: np.random.Generator, budget: float, seed: int, steps: int, dt: float,
                       hyper: dict, traj: int) -> None:
        try:
            s = uvc.Solver(self.spec, budget, seed=seed, **hyper)
        except ValueError:
            s = uvc.Solver(self.spec, 1.0, seed=seed, **hyper)
        tokens = bool(hyper.get("prune_tokens", False))
        fixed = _native_args(self.spec, s.hyper, s.convention, seed)
        layout = json.loads(s._core.layout())
        sizes = [sum(int(np.prod(shape, dtype=np.int64)) for _, shape in layout[k]) for k in ("summary", "fields")]
        marks = {0, steps // 2, steps}
        epoch = 0.0
        for t in range(steps + 1):
            if t in marks:
                self.snaps.append(Snapshot(self.spec, traj, fixed, s._core.save(), epoch, tokens, s.hyper,
                                           s.convention, s.state_dict(), *sizes))
            if t == steps:
                break
            epoch = t * dt
            s.sample_gates(epoch)
            k = int(g.integers(len(self.scores)))
            s.step(*self.scores[k], self.gate_grads[k], lr=1e-3, epoch=epoch,
                   token_scores=self.token_scores[k] if tokens else None)


def _small_spec(g: random.Random, tokens: bool) -> uvc.ViTSpec:
    heads = g.randint(1, 4)
    hd = g.randint(1, 6)
    patch = g.randint(1, 5)
    grid = (g.randint(2, 4), g.randint(2, 4)) if tokens else (g.randint(1, 4), g.randint(1, 4))
    prefix = g.choice([1, 2]) if tokens else g.choice([0, 1, 2])
    return uvc.ViTSpec(depth=g.randint(2, 4) if tokens else g.randint(1, 4), embed_dim=heads * hd, num_heads=heads,
                       mlp_hidden=g.choice([1, 2, 3, 4, 6, 8, 12, 16]), patch_size=patch,
                       image_size=(patch * grid[0], patch * grid[1]), in_channels=g.randint(1, 3),
                       prefix_tokens=prefix, num_classes=g.randint(0, 20),
                       classifier_heads=g.randint(1, max(prefix, 1)),
                       qk_head_dim=g.choice([None, g.randint(1, 6)]) or hd,
                       v_head_dim=g.choice([None, g.randint(1, 6)]) or hd)


class Corpus:
    """Everything the builders draw from; a function of the seed only."""

    def __init__(self, seed: int, pool: int = 6) -> None:
        g = random.Random(seed)
        ng = np.random.default_rng(seed)
        specs = [uvc.ViTSpec.from_name("deit_tiny_patch16_224")]
        specs += [_small_spec(g, tokens=i < 2) for i in range(4)]
        self.cases = [SpecCase(s, ng, pool) for s in specs]
        variants = [
            (0.5, dict()),
            (0.4, dict(gate_granularity="part", gate_sampler="sigmoid", warmup_epochs=0.0, gating_interval=2,
                       prune_tokens=True, lr_counts=(0.1, 0.05, 0.2), budget_damping=0.0)),
            (0.7, dict(gate_sampler="softl0", straight_through=False, warmup_epochs=0.5, gating_interval=1,
                       hysteresis=0.0, gate_init=-1.0, zlr_schedule=(), tau_decay=0.9)),
        ]
        traj = 0
        for ci, case in enumerate(self.cases):
            for vi, (budget, hyper) in enumerate(variants):
                if hyper.get("prune_tokens") and not case.tokens_ok:
                    hyper = dict(hyper, prune_tokens=False)
                case.add_trajectory(ng, budget, seed=seed * 31 + ci * 7 + vi, steps=8 if ci == 0 else 12,
                                    dt=1.0 if vi == 0 else 0.25, hyper=hyper, traj=traj)
                traj += 1
        self.token_cases = [c for c in self.cases if c.tokens_ok]
        self.snaps = [s for case in self.cases for s in case.snaps]
        self.conventions = [_ro(c.encoded) for c in uvc.CONVENTIONS.values()]
        self.conventions.append(_ro(uvc.Convention(layer_norm=2.5, softmax=True, bias=True).encoded))
        # Sampler states: fresh ones and ones a few samples on.
        self.sampler_bytes = []
        for k in range(4):
            s = _native.GroupSampler(seed + k - (1 << 63) * (k == 3))
            for _ in range(k):
                s.sample(0, np.empty(5, np.int64), np.empty(3, np.int64), np.empty((3, 2)))
            self.sampler_bytes.append(s.save())
        self.sampler_dicts = [usdc.GroupSampler(seed + k).state_dict() for k in range(2)]

    def case(self, r: random.Random) -> SpecCase:
        # DeiT-Tiny a quarter of the time: it is the realistic size, the small ones are fast.
        return self.cases[0] if r.random() < 0.25 else r.choice(self.cases[1:])

    def foreign_states(self) -> list[bytes]:
        """Every saved state of the corpus: solvers of every spec and config, samplers."""
        return [s.saved for s in self.snaps] + self.sampler_bytes


# --------------------------------------------------------------------------------------------
# Seed-call builders. Each takes (r, corpus, edge) and returns a Call; ``edge`` draws the free
# sizes and values at their limits (a mutated input: it need not be accepted).

_SLOT_OF_KIND = {"s": Slot("scalar"), "i": Slot("obj", tag="int"), "b": Slot("bytes")}


def _native_call(name: str, args: list, obj=None, probe: Probe | None = None) -> Call:
    """A call of native ``name``: a module function, a type (its constructor) or, with ``obj``,
    the method ``name`` = "Type.method" of that live object."""
    sig = NATIVE_SIGS[name]
    assert len(sig) == len(args), name
    slots = [_SLOT_OF_KIND.get(k) or Slot("arr", "d" if k == "n" else k, w) for _, k, w in sig]
    fn = getattr(obj, name.split(".", 1)[1]) if obj is not None else getattr(_native, name)
    return Call("native." + name, fn, args, {}, [dataclasses.replace(s) for s in slots], {}, [n for n, _, _ in sig],
                True, probe=probe)


EDGE_FLOATS = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1e-300, 1e300, 1.7976931348623157e308, 1.0, 0.5,
               2.0 ** 53, 2.0 ** 63, 2.0 ** 64, 1e-12]


def _edge_spec(r: random.Random) -> np.ndarray:
    """A spec encoding inside (or just outside) the core's documented limits."""
    big = 1 << 20

    def size():
        return r.choice([1, 2, 3, 7, 64, 1000, big - 1, big, big + 1, 0, -1])

    patch = r.choice([1, 2, 16, big])
    gh, gw = r.choice([1, 2, 3, 1 << 10, big]), r.choice([1, 2, 3, 1 << 10, big])
    prefix = r.choice([0, 1, 2, 64, 65])
    e = [r.choice([1, 2, 3]), size(), size(), size(), size(), size(), patch, patch * gh, patch * gw,
         size(), prefix, r.choice([0, 1, 1000, big, big + 1]), r.choice([1, 2, max(prefix, 1)]),
         r.choice([0, 1, 0, 1, 2, -1]),  # pre_norm: 0 or 1, now and then out of range
         r.choice([0, 1, 2, 0, 3, -1])]  # pool: an index of the pools, now and then out of range
    e += [r.choice([0, 1, 0, 1, 2, -1]) for _ in range(3)]  # fc_norm, qk_norm, gated_mlp
    e.append(r.choice([0, 1, int(prefix >= 1), 2, -1]))  # class_token
    return np.array(e, dtype=np.int64)


def b_layouts(r, c, edge):
    return _native_call("layouts", [])


def b_cost_exact(r, c, edge):
    sc = c.case(r)
    d = sc.spec.depth
    if edge and r.random() < 0.7:
        enc = _edge_spec(r)
        d = int(enc[0])
        n_tok = (int(enc[7]) // max(int(enc[6]), 1)) * (int(enc[8]) // max(int(enc[6]), 1)) + int(enc[10])
        row = [enc[2], enc[4], enc[5], 1, 1, n_tok] if r.random() < 0.7 else [0, 0, 0, 0, 0, n_tok]
        plan = np.tile(np.array(row, dtype=np.int64), (d, 1))
        return _native_call("cost_exact", [enc, r.choice(c.conventions), plan, np.empty((d, len(LAYER_COMPONENTS))),
                                           np.empty(len(GLOBAL_COMPONENTS))])
    return _native_call("cost_exact", [sc.enc, r.choice(c.conventions), r.choice(sc.plans),
                                       np.empty((d, len(LAYER_COMPONENTS))), np.empty(len(GLOBAL_COMPONENTS))])


def _latency_table(r, spec: uvc.ViTSpec, edge: bool) -> list:
    """A latency table's arguments for ``spec``: width grids from 1 to the dense width with a few
    points between, a token grid ending at the model's tokens (half the time from prefix + 2,
    else the one point), positive times; with ``edge`` a grid point or a time at or past its
    limits."""
    def grid(dense, first=1):
        inner = sorted(r.sample(range(first + 1, dense), min(max(dense - first - 1, 0), r.randrange(4)))) \
            if dense > first + 1 else []
        return [first] + inner + ([dense] if dense > first else [])
    heads, v, n = grid(spec.num_heads), grid(spec.v_head_dim), grid(spec.mlp_hidden)
    nt = spec.num_tokens
    t = grid(nt, min(spec.prefix_tokens + 2, nt)) if r.random() < 0.5 else [nt]
    att = np.array([[[0.01 + r.random() for _ in t] for _ in v] for _ in heads])
    mlp = np.array([[0.01 + r.random() for _ in t] for _ in n])
    drop = np.array([r.random() * 0.1 for _ in t])
    fixed = r.random()
    if edge:
        which = r.randrange(6)
        if which == 0:
            att[r.randrange(len(heads)), r.randrange(len(v)), r.randrange(len(t))] = \
                r.choice([0.0, -1.0, math.nan, math.inf, 5e-324])
        elif which == 1:
            n[0] = r.choice([0, 2, -1])
        elif which == 2:
            v[-1] = r.choice([spec.v_head_dim + 1, spec.v_head_dim - 1, 1 << 40])
        elif which == 3:
            t[-1] = r.choice([nt + 1, nt - 1, 0, -1])
        elif which == 4:
            drop[r.randrange(len(t))] = r.choice([-1.0, math.nan, math.inf, -5e-324])
        else:
            fixed = r.choice([-1.0, math.nan, 0.0, 1e308])
    return [np.array(heads, dtype=np.int64), np.array(v, dtype=np.int64), np.array(n, dtype=np.int64),
            np.array(t, dtype=np.int64), att, mlp, drop, fixed]


def b_latency_exact(r, c, edge):
    sc = c.case(r)
    d = sc.spec.depth
    table = _latency_table(r, sc.spec, edge)
    # Plans the table's token grid spans, and (edge) any plan: the rest are refused.
    first = int(table[3][0]) if table[3].size else sc.spec.num_tokens
    plans = [p for p, a in zip(sc.plans, sc.arch_plans) if all(l.tokens >= first for l in a.layers)] or sc.plans
    plan = r.choice(plans) if not edge or r.random() < 0.5 else r.choice(sc.plans)
    return _native_call("latency_exact", [sc.enc, *table, plan, np.empty((d, 2))])


def b_latency_expected(r, c, edge):
    sc = c.case(r)
    d = sc.spec.depth
    x = r.choice(sc.xs).copy()
    table = _latency_table(r, sc.spec, edge)
    first = float(table[3][0]) if table[3].size else sc.spec.num_tokens
    x[_TOKENS] = np.maximum(x[_TOKENS], first) if r.random() < 0.9 else x[_TOKENS]  # mostly counts the table spans
    x[_QK] = sc.spec.qk_head_dim  # the only width a table prices
    if edge:
        x[r.randrange(_FIELDS)] = r.choice([0.0, 5e-324, 1.0, -1.0])
    return _native_call("latency_expected", [sc.enc, *table, x, np.empty((_FIELDS, d))])


def b_cost_expected(r, c, edge):
    sc = c.case(r)
    d = sc.spec.depth
    if edge and r.random() < 0.5:
        enc = _edge_spec(r)
        d = int(enc[0])
        n_tok = (int(enc[7]) // max(int(enc[6]), 1)) * (int(enc[8]) // max(int(enc[6]), 1)) + int(enc[10])
        bound = dict(heads=enc[2], qk_dim=enc[3], v_dim=enc[4], neurons=enc[5], attn_gate=1, mlp_gate=1, tokens=n_tok)
        upper = np.array([bound[f] for f in uvc.cost.RELAXED_FIELDS], dtype=np.float64)
        x = np.repeat(upper[:, None], d, 1) * r.choice([0.0, 1.0, 0.5, 1 + 1e-15])
        return _native_call("cost_expected", [enc, r.choice(c.conventions), x, np.empty((_FIELDS, d))])
    x = r.choice(sc.xs)
    if edge:
        x = x.copy()
        x[r.randrange(_FIELDS)] = r.choice([0.0, 5e-324, 1.0])
    return _native_call("cost_expected", [sc.enc, r.choice(c.conventions), x, np.empty((_FIELDS, d))])


def _least_squares(r, edge):
    """A random regression problem: inputs x (n, d), targets y (n, m)."""
    n = r.choice([0, 1, 2, 300]) if edge else r.choice([3, 17, 64])
    d, m = (r.choice([1, 2, 33]), r.choice([0, 1, 7])) if edge else (r.choice([1, 4, 9]), r.choice([1, 3]))
    rng = np.random.default_rng(r.randrange(2**32))
    x = rng.standard_normal((n, d))
    if edge and d > 1 and r.random() < 0.5:
        x[:, -1] = x[:, 0]  # a repeated column: singular without the ridge
    return x, x @ rng.standard_normal((d, m)) + 0.1 * rng.standard_normal((n, m))


def b_gram_accumulate(r, c, edge):
    x, y = _least_squares(r, edge)
    if r.random() < 0.3:
        x, y = x.astype(np.float32), y.astype(np.float32)
    return _native_call("gram_accumulate", [x, y, np.zeros((x.shape[1],) * 2), np.zeros((x.shape[1], y.shape[1]))])


def b_ridge_solve(r, c, edge):
    x, y = _least_squares(r, edge)
    d = x.shape[1]
    kept = np.array(sorted(r.sample(range(d), r.randint(1, d))), dtype=np.int64)
    ridge = r.choice([0.0, 1e-12, 1e-3, 1.0, 1e6] if edge else [1e-3, 1e-2])
    return _native_call("ridge_solve", [x.T @ x, x.T @ y, kept, ridge, np.empty((kept.size, y.shape[1]))])


def _snap(r, c, tokens=False) -> Snapshot:
    if tokens:
        return r.choice([s for case in c.token_cases for s in case.snaps if s.tokens])
    return r.choice(c.case(r).snaps)


def _case_of(c, s: Snapshot) -> SpecCase:
    return next(case for case in c.cases if case.spec is s.spec)


def _epoch(r, s: Snapshot, edge: bool) -> float:
    if edge:
        return r.choice([0.0, -0.0, 5e-324, 1e300, 1.7976931348623157e308, s.epoch, 2.0 ** 53])
    return s.epoch + r.random()


def _scores(r, sc: SpecCase, edge: bool):
    scores = r.choice(sc.scores)
    if edge:
        # Every score of a kind set to v: v up to 1e300 keeps their sum finite (a sum past the
        # largest double is refused by the core, a mutation rather than a valid call).
        v = r.choice([0.0, 5e-324, 1e-300, 1e300, 1.0])
        which = r.randrange(4)
        scores = tuple(np.full(a.shape, v) if which in (k, 3) else a for k, a in enumerate(scores))
    return scores


# ---- _native.Solver: the constructor, and each method on a live object ----

def b_solver_new(r, c, edge):
    s = _snap(r, c)
    spec, conv, config, schedule, seed, *latency = s.fixed
    if r.random() < 0.3:  # a latency budget (refused with token pruning unless the token grid reaches prefix + 2)
        latency = _latency_table(r, s.spec, edge and r.random() < 0.5)
    seed = r.choice([0, -1, 2 ** 63 - 1, -2 ** 63]) if edge else r.getrandbits(64) - 2 ** 63
    if edge and r.random() < 0.5:
        # One config field (or the schedule) at a limit: a mutated input, refused or not.
        config = config.copy()
        if r.random() < 0.3:
            schedule = np.array(r.choice([[], [0.0], [1e300], [5.0, 1.0], list(range(1000)), [-1.0], [math.inf]]),
                                dtype=np.float64)
        else:
            config[r.randrange(config.size)] = r.choice([0.0, 1.0, 2.0, 5e-324, 1e300, 1.7976931348623157e308, 1e-12,
                                                         -0.0, 3.0, 2.0 ** 31, 2.0 ** 53, 0.5])
    return _native_call("Solver", [spec, conv, config, schedule, seed, *latency])


def _solver_follow(r, c, s: Snapshot) -> tuple:
    """A valid call (name, fn(obj)) on a solver of snapshot ``s``'s spec and config."""
    sc = _case_of(c, s)
    d = s.spec.depth
    k = r.randrange(len(sc.scores))
    name = r.choice(["summary", "fields", "step", "step", "sample_gates", "masks", "plan", "layout", "save"])
    epoch = s.epoch + r.random()
    tokens = sc.token_scores[k] if s.tokens else None
    grad = sc.gate_grads[k]
    round_to, fit = r.choice([1, 2, 8]), r.choice([0, 1])
    fns = {
        "summary": lambda o: o.summary(np.empty(s.n_summary)),
        "fields": lambda o: o.fields(np.empty(s.n_fields)),
        "step": lambda o: o.step(*sc.scores[k], grad, tokens, 1e-3, epoch, *(np.empty(x) for x in sc.shapes)),
        "sample_gates": lambda o: o.sample_gates(epoch, np.empty((d, 2))),
        "masks": lambda o: o.masks(*(np.empty(x) for x in sc.shapes)),
        "plan": lambda o: o.plan(round_to, fit, np.empty((d, len(PLAN_ROW)), np.int64), *(np.empty(x) for x in sc.shapes)),
        "layout": lambda o: json.loads(o.layout()),
        "save": lambda o: o.save(),
    }
    return name, fns[name]


def _solver_probe(r, c, s: Snapshot, obj) -> Probe:
    return Probe(obj, obj.save, _solver_follow(r, c, s), lambda: obj.load(obj.save()))


def _solver_method(name: str, r, c, args_of: Callable, tokens: bool = False) -> Call:
    s = _snap(r, c, tokens=tokens)
    obj = native_solver(s)
    return _native_call("Solver." + name, args_of(s, _case_of(c, s)), obj, _solver_probe(r, c, s, obj))


def b_solver_layout(r, c, edge):
    return _solver_method("layout", r, c, lambda s, sc: [])


def b_solver_sample_gates(r, c, edge):
    return _solver_method("sample_gates", r, c, lambda s, sc: [_epoch(r, s, edge), np.empty((s.spec.depth, 2))])


def b_solver_step(r, c, edge):
    def args(s, sc):
        k = r.randrange(len(sc.scores))
        grad = sc.gate_grads[k] if r.random() < 0.7 else None
        # Token scores are read with prune_tokens; any solver takes (and checks) them.
        tokens = sc.token_scores[k] if r.random() < (0.8 if s.tokens else 0.2) else None
        if edge and s.tokens and r.random() < 0.3:
            tokens = np.full((s.spec.depth, s.spec.num_tokens), r.choice([0.0, 5e-324, 1e300, 1.0]))
        lr = r.choice([0.0, 5e-324, 1e300, 1.7976931348623157e308, 1.0]) if edge else r.choice([1e-3, 1e-4, 0.1, 1])
        return [*_scores(r, sc, edge), grad, tokens, lr, _epoch(r, s, edge), *(np.empty(x) for x in sc.shapes)]
    return _solver_method("step", r, c, args, tokens=r.random() < 0.3)


def b_solver_masks(r, c, edge):
    return _solver_method("masks", r, c, lambda s, sc: [np.empty(x) for x in sc.shapes])


def b_solver_plan(r, c, edge):
    def args(s, sc):
        round_to = r.choice([1, 2, 3, 4, 8, 16, 2 ** 20, 2 ** 20 + 1, 0, 2 ** 62]) if edge else r.choice([1, 2, 4, 8])
        fit = r.choice([0, 1, 2, -1]) if edge else r.choice([0, 1])
        return [round_to, fit, np.empty((s.spec.depth, len(PLAN_ROW)), dtype=np.int64), *(np.empty(x) for x in sc.shapes)]
    return _solver_method("plan", r, c, args)


def b_solver_summary(r, c, edge):
    return _solver_method("summary", r, c, lambda s, sc: [np.empty(s.n_summary)])


def b_solver_fields(r, c, edge):
    return _solver_method("fields", r, c, lambda s, sc: [np.empty(s.n_fields)])


def b_solver_save(r, c, edge):
    return _solver_method("save", r, c, lambda s, sc: [])


def b_solver_load(r, c, edge):
    def args(s, sc):
        same = [x for x in sc.snaps if x.traj == s.traj]
        if edge:
            # Another config's state of the same spec: same sizes or not, refused or not.
            return [r.choice(sc.snaps).saved]
        return [r.choice(same).saved]
    return _solver_method("load", r, c, args)


# ---- _native.GroupSampler ----

def _batch(r, edge):
    if edge:
        return r.choice([1, 2, 3, 255, 256, 257, 4096, 1 << 16])
    return r.choice([1, 2, 3, 4, 5, 7, 8, 12, 16, 33])


_GROUPINGS = len(_core.LAYOUTS["groupings"])


def b_sampler_new(r, c, edge):
    seed = r.choice([0, 1, -1, 2 ** 63 - 1, -2 ** 63]) if edge else r.getrandbits(64) - 2 ** 63
    return _native_call("GroupSampler", [seed])


def native_sampler(c, r):
    o = _native.GroupSampler(0)
    o.load(r.choice(c.sampler_bytes))
    return o


def _sampler_follow(r) -> tuple:
    name = r.choice(["sample", "sample", "group_count", "save"])
    mode, b, cols = r.randrange(_GROUPINGS), _batch(r, False), r.randint(0, 8)

    def sample(o):
        g = int(o.group_count(mode, b))
        o.sample(mode, np.empty(b, np.int64), np.empty(g, np.int64), np.empty((g, cols)))
    fns = {"sample": sample, "group_count": lambda o: o.group_count(mode, b), "save": lambda o: o.save()}
    return name, fns[name]


def _sampler_method(name: str, r, c, args_of: Callable) -> Call:
    obj = native_sampler(c, r)
    probe = Probe(obj, obj.save, _sampler_follow(r), lambda: obj.load(obj.save()))
    return _native_call("GroupSampler." + name, args_of(obj), obj, probe)


def b_sampler_group_count(r, c, edge):
    def args(o):
        b = r.choice([1, 2, 3, 1 << 20, 1 << 40, (1 << 40) + 1, 0, -1]) if edge else _batch(r, False)
        return [r.randrange(_GROUPINGS), b]
    return _sampler_method("group_count", r, c, args)


def b_sampler_sample(r, c, edge):
    def args(o):
        b = _batch(r, edge)
        mode = r.randrange(_GROUPINGS)
        cols = r.choice([0, 1, 2, 512]) if edge else r.randint(0, 8)
        g = int(o.group_count(mode, b))
        return [mode, np.empty(b, dtype=np.int64), np.empty(g, dtype=np.int64), np.empty((g, cols))]
    return _sampler_method("sample", r, c, args)


def b_sampler_save(r, c, edge):
    return _sampler_method("save", r, c, lambda o: [])


def b_sampler_load(r, c, edge):
    return _sampler_method("load", r, c, lambda o: [r.choice(c.sampler_bytes)])


# ---- the stateless USDC functions ----

def _gate_inputs(r, edge):
    """logits (B, C), groups (B,), noise (G, C) of a valid group-gate call; ``edge`` puts B, C, G
    (and the values) at their limits, e.g. empty columns, one group per sample."""
    b = _batch(r, edge) if not edge or r.random() < 0.5 else 1
    cols = r.randint(1, 8)
    g = r.randint(1, b)  # a partition has at most one group per sample
    if edge:
        cols = r.choice([0, 0, 1, 2, cols])
        g = r.choice([1, b, g])
    ng = np.random.default_rng(r.getrandbits(32))
    groups = ng.integers(0, min(g, 1 << 62), size=b, dtype=np.int64)
    if edge and r.random() < 0.3:
        groups[:] = r.choice([0, g - 1])
    logits = ng.normal(size=(b, cols)) * (r.choice([1.0, 1e300, 1e-300, 0.0]) if edge else 2.0)
    noise = np.empty((g, cols)) if cols == 0 else ng.logistic(size=(g, cols))
    return logits, groups, noise


def _tau(r, edge):
    return r.choice([5e-324, 1e-300, 1e300, 1.7976931348623157e308, 1.0]) if edge else r.choice([0.5, 1.0, 2.0, 1])


def b_group_gates(r, c, edge):
    x, groups, noise = _gate_inputs(r, edge)
    st = r.choice([0.0, 1.0, 0, 1])
    return _native_call("group_gates", [x, groups, noise, _tau(r, edge), st, np.empty_like(x), np.empty_like(x)])


def b_group_gates_backward(r, c, edge):
    x, groups, noise = _gate_inputs(r, edge)
    ng = np.random.default_rng(r.getrandbits(32))
    scale = r.choice([0.0, 1e300, 5e-324]) if edge else 1.0
    return _native_call("group_gates_backward", [x, groups, noise, ng.normal(size=x.shape) * scale,
                                                 ng.normal(size=x.shape), _tau(r, edge), np.empty_like(x)])


def _loss_inputs(r, sc: SpecCase, edge: bool):
    d, h = sc.spec.depth, sc.spec.num_heads
    k = r.choice(sc.divisors if not edge else [1, sc.spec.mlp_hidden])
    o = r.choice([0, 1, 2, 3] if not edge else [0, 1, 64])
    ng = np.random.default_rng(r.getrandbits(32))

    def probs(shape):
        p = ng.random(shape)
        if edge:
            p = np.round(p) if r.random() < 0.5 else p * r.choice([0.0, 1.0, 5e-324])
        return p

    gate_costs = ng.random((d, o)) * (r.choice([0.0, 1e300, 5e-324, 1e6]) if edge else 1e4)
    return [probs((d, h)), probs((d, k)), probs((d, 2)), probs((d, 2)), gate_costs,
            ng.dirichlet(np.ones(o), size=d) if o else np.zeros((d, 0))]


def _loss_scalars(r, edge):
    if edge:
        return [r.choice([0.0, 5e-324, 1.0, 1e300, 0.5]), r.choice([0.0, 1e300, 5e-324, 100.0]),
                r.choice([0.0, 1e300, 5e-324, 1.0])]
    return [r.choice([0.3, 0.5, 0.8, 1.0, 1]), r.choice([0.0, 1.0, 100.0]), r.choice([0.0, 0.5, 2.0])]


def b_resource_loss(r, c, edge):
    sc = c.case(r)
    ins = _loss_inputs(r, sc, edge)
    # A latency budget in 3 of 10 inputs: costs in ms of a table.
    table = _latency_table(r, sc.spec, edge and r.random() < 0.5) if r.random() < 0.3 else [None] * len(_LATENCY)
    return _native_call("resource_loss", [sc.enc, r.choice(c.conventions), *ins, *_loss_scalars(r, edge), np.empty(3),
                                          *(np.empty_like(a) for a in ins), *table])


# ---- two threads ----
# A native object serves one thread at a time: a call while another thread's call on the same
# object runs raises RuntimeError ("busy") and changes nothing. Two threads on one object: every
# call returns or raises RuntimeError (with ``edge``, a few calls are malformed and may raise
# TypeError / ValueError too); anything else, a crash or a hang fails the input. Two threads on
# two objects in the same state running the same calls: nothing may raise, and both end in the
# same state (no state shared between objects).

class ThreadCheckFailed(Exception):
    """A thread run broke the rules above (reported as an 'other' failure)."""


def _thread_ops(r, c, s: Snapshot | None, n: int, edge: bool, shared: bool) -> list:
    """``n`` calls (name, args, bad) on a solver of ``s`` (or a sampler when ``s`` is None);
    outputs are the calling thread's own (each op allocates its own)."""
    ops = []
    if s is not None:
        sc = _case_of(c, s)
        d = s.spec.depth
        for _ in range(n):
            k = r.randrange(len(sc.scores))
            epoch = s.epoch + r.random()
            name = r.choice(["step", "step", "sample_gates", "plan", "save", "masks", "summary"]
                            + (["load"] if shared else []))
            outs = lambda: [np.empty(x) for x in sc.shapes]  # noqa: E731
            if name == "step":
                args = [*sc.scores[k], sc.gate_grads[k], sc.token_scores[k] if s.tokens else None, 1e-3, epoch,
                        *outs()]
            elif name == "sample_gates":
                args = [epoch, np.empty((d, 2))]
            elif name == "plan":
                args = [r.choice([1, 8]), r.choice([0, 1]), np.empty((d, len(PLAN_ROW)), np.int64), *outs()]
            elif name == "masks":
                args = outs()
            elif name == "summary":
                args = [np.empty(s.n_summary)]
            elif name == "load":
                args = [r.choice([x for x in sc.snaps if x.traj == s.traj]).saved]
            else:
                args = []
            bad = edge and r.random() < 0.2
            if bad:
                args = args[:-1] if args and r.random() < 0.5 else args + [np.zeros(3)]
            ops.append((name, args, bad))
    else:
        for _ in range(n):
            name = r.choice(["sample", "sample", "group_count", "save"] + (["load"] if shared else []))
            mode, b, cols = r.randrange(_GROUPINGS), _batch(r, False), r.randint(0, 8)
            if name == "sample":
                g = {0: b.bit_length(), 1: b, 2: 1, 3: (b - b // 2).bit_length() + b // 2}[mode]
                args = [mode, np.empty(b, np.int64), np.empty(g, np.int64), np.empty((g, cols))]
            elif name == "group_count":
                args = [mode, b]
            elif name == "load":
                args = [r.choice(c.sampler_bytes)]
            else:
                args = []
            bad = edge and r.random() < 0.2
            if bad:
                args = args[:-1] if args and r.random() < 0.5 else args + [np.zeros(3)]
            ops.append((name, args, bad))
    return ops


def _run_threads(objs: list, ops: list[list], shared: bool, info: dict) -> None:
    barrier = threading.Barrier(len(ops))
    problems: list[str] = []
    busy = [0] * len(ops)

    def work(t: int) -> None:
        obj = objs[t]
        try:
            barrier.wait(10)
        except threading.BrokenBarrierError:
            pass
        for i, (name, args, bad) in enumerate(ops[t]):
            try:
                getattr(obj, name)(*args)
            except RuntimeError as e:
                if shared and "in use by another thread" in str(e):
                    busy[t] += 1
                    continue
                problems.append(f"thread {t} call {i} {name}: RuntimeError: {str(e)[:200]}")
            except (TypeError, ValueError) as e:
                if not bad:
                    problems.append(f"thread {t} call {i} {name} (valid): {type(e).__name__}: {str(e)[:200]}")
            except BaseException as e:  # noqa: BLE001 - the point
                problems.append(f"thread {t} call {i} {name}: {type(e).__name__}: {str(e)[:200]}")

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(len(ops))]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    info["busy"] = sum(busy)
    if problems:
        raise ThreadCheckFailed(f"{len(problems)} bad outcomes; first: {problems[0]}")
    for t, obj in enumerate(objs):
        try:
            obj.load(obj.save())
        except Exception as e:  # noqa: BLE001
            raise ThreadCheckFailed(f"object {t} after the threads: load(save()) raised {type(e).__name__}: {e}")


def b_threads_shared(r, c, edge):
    s = _snap(r, c, tokens=r.random() < 0.2) if r.random() < 0.7 else None
    obj = native_solver(s) if s is not None else native_sampler(c, r)
    n = r.choice([20, 40, 80])
    ops = [_thread_ops(r, c, s, n, edge, shared=True) for _ in range(2)]
    what = f"{'Solver' if s else 'GroupSampler'}: 2 threads x {n} calls on one object"
    call = Call("threads.shared", lambda: _run_threads([obj, obj], ops, True, call.info), [], {}, [], {}, [], True,
                fixed=True)
    call.mutations.append(what + (" (some malformed)" if edge else ""))
    return call


def b_threads_separate(r, c, edge):
    s = _snap(r, c, tokens=r.random() < 0.2) if r.random() < 0.7 else None
    sampler_state = r.choice(c.sampler_bytes)

    def fresh():
        if s is not None:
            return native_solver(s)
        o = _native.GroupSampler(0)
        o.load(sampler_state)
        return o
    objs = [fresh(), fresh()]
    n = r.choice([20, 40, 80])
    seq = _thread_ops(r, c, s, n, False, shared=False)
    # The same calls in both threads, each with its own outputs.
    ops = [seq, [(name, [a.copy() if isinstance(a, np.ndarray) and a.flags.writeable else a for a in args], bad)
                 for name, args, bad in seq]]

    def run():
        _run_threads(objs, ops, False, call.info)
        if objs[0].save() != objs[1].save():
            raise ThreadCheckFailed("two objects in the same state running the same calls in two threads "
                                    "ended in different states")
        for (name, a0, _), (_, a1, _) in zip(*ops):
            for x, y in zip(a0, a1):
                if isinstance(x, np.ndarray) and x.flags.writeable and name != "load" and \
                        not np.array_equal(x, y, equal_nan=True):
                    raise ThreadCheckFailed(f"the same {name} call in two threads wrote different outputs")
    call = Call("threads.separate", run, [], {}, [], {}, [], True, fixed=True)
    call.mutations.append(f"{'Solver' if s else 'GroupSampler'}: 2 threads x {n} calls, one object each")
    return call


# ---- the public numpy API -------------------------------------------------------------------

def _api(target: str, fn: Callable, args: list, kwargs: dict, slots: list, kwslots: dict,
         names: list | None = None) -> Call:
    return Call("api." + target, fn, args, kwargs, slots, kwslots, names or [f"arg{i}" for i in range(len(args))],
                False)


A = lambda dtype="d", out=False: Slot("arr", dtype, out)  # noqa: E731
S = Slot("scalar")
O = lambda tag: Slot("obj", tag=tag)  # noqa: E731
J = Slot("json")

_CONV_NAMES = list(uvc.CONVENTIONS)


def _convention(r):
    return r.choice(_CONV_NAMES + [uvc.Convention(layer_norm=1.5, gelu=True)])


def b_api_vitspec(r, c, edge):
    sc = c.case(r)
    fields = sc.spec.to_dict()
    fields.pop("name")
    if edge:
        fields = dict(fields, depth=r.choice([1, 1 << 20]), image_size=r.choice([1, (1 << 20, 1 << 20)]), patch_size=1)
    keys = list(fields)
    slots = {k: (O("seq") if k == "image_size" else S if fields[k] is not None else O("int")) for k in keys}
    return _api("ViTSpec", uvc.ViTSpec, [], fields, [], slots)


def b_api_vitspec_from_dict(r, c, edge):
    return _api("ViTSpec.from_dict", uvc.ViTSpec.from_dict, [c.case(r).spec.to_dict()], {}, [J], {})


def b_api_vitspec_from_name(r, c, edge):
    name = r.choice(uvc.spec_names())
    kw = {"num_classes": r.choice([0, 10, 1000])} if r.random() < 0.5 else {}
    return _api("ViTSpec.from_name", uvc.ViTSpec.from_name, [name], kw, [O("str")], {k: S for k in kw})


def b_api_count(r, c, edge):
    sc = c.case(r)
    return _api("count", uvc.count, [sc.spec, r.choice(sc.arch_plans + [None]), _convention(r)], {},
                [O("spec"), O("plan"), O("convention")], {})


def b_api_random_plan(r, c, edge):
    sc = c.case(r)
    kw = dict(skip_prob=r.choice([0.0, 0.15, 0.5]), tokens=r.random() < 0.5, drop_prob=r.choice([0.0, 0.3, 1.0]))
    return _api("random_plan", uvc.random_plan, [sc.spec, np.random.default_rng(r.getrandbits(32))], kw,
                [O("spec"), O("rng")], {"skip_prob": S, "tokens": O("bool"), "drop_prob": S})


def b_api_archplan_from_dict(r, c, edge):
    sc = c.case(r)
    p = r.choice(sc.arch_plans)
    args, slots = [p.to_dict()], [J]
    if r.random() < 0.3:
        args.append(sc.spec)
        slots.append(O("spec"))
    return _api("ArchPlan.from_dict", ArchPlan.from_dict, args, {}, slots, {})


def _relaxed_fields(r, sc: SpecCase):
    spec = sc.spec
    upper = dict(zip(RELAXED_FIELDS, uvc.cost.relaxed_inputs(spec)[:, 0]))  # the dense model's
    out = {}
    for name in r.sample(RELAXED_FIELDS, r.randint(0, len(RELAXED_FIELDS))):
        if r.random() < 0.5:
            out[name] = r.random() * upper[name]
        else:
            out[name] = [r.random() * upper[name] for _ in range(spec.depth)]
    return out


def b_api_relaxed_cost(r, c, edge):
    sc = c.case(r)
    fields = _relaxed_fields(r, sc)
    slots = {k: (S if isinstance(v, float) else O("seq")) for k, v in fields.items()}
    return _api("relaxed_cost", uvc.relaxed_cost, [sc.spec, _convention(r)], fields, [O("spec"), O("convention")],
                slots)


def b_api_expected_cost(r, c, edge):
    sc = c.case(r)
    x = r.choice(sc.xs)
    args, slots = [sc.spec, x], [O("spec"), A()]
    kwargs, kwslots = {}, {}
    if r.random() < 0.6:
        kwargs["out"] = np.empty(x.shape)
        kwslots["out"] = A(out=True)
    if r.random() < 0.6:
        kwargs["convention"] = _convention(r)
        kwslots["convention"] = O("convention")
    return _api("expected_cost", uvc.expected_cost, args, kwargs, slots, kwslots)


HYPER_VALID: dict[str, list] = dict(
    gate_granularity=["block", "part"], gate_sampler=["gumbel", "sigmoid", "softl0"], straight_through=[True, False],
    warmup_epochs=[0.0, 1.0, 5.0], lr_counts=[0.02, (0.01, 0.02, 0.03), [0.1, 0.1, 0.1]], lr_tokens=[0.02, 0.1],
    budget_damping=[0.0, 10.0], hysteresis=[0.0, 0.3], gate_lr=[0.1, 1.0], gating_weight=[5e-4, 1.0],
    gating_interval=[1, 50], gate_momentum=[0.0, 0.9], gate_init=[2.0, -1.0], z_lr=[1.0, 0.1],
    zlr_schedule=[(1, 5, 9), (), [2.0]], zlr_gamma=[1.5, 1.0], z_grad_clip=[0.5, 1.0], z_init=[0.0, 1.0],
    dual_lr=[1e-4], dual_init=[1.0, 0.0], tau=[0.5, 1.0], tau_decay=[1.0, 0.9], tau_min=[0.05], eps=[0.1],
    eps_decay=[0.92])
_HYPER_FLAGS = ("prune_heads", "prune_dims", "prune_neurons", "prune_tokens", "skip_blocks", "straight_through")


def _hyper_slot(name, value):
    if name in _HYPER_FLAGS:
        return O("bool")
    if name in ("gate_granularity", "gate_sampler"):
        return O("str")
    if name == "gating_interval":
        return O("int")
    if isinstance(value, (tuple, list)):
        return O("seq")
    return S


def b_api_solver(r, c, edge):
    sc = c.case(r)
    budget = 0.5 if sc is c.cases[0] else 1.0
    kw = {k: r.choice(v) for k, v in r.sample(sorted(HYPER_VALID.items()), r.randint(0, 6))}
    if sc.tokens_ok and r.random() < 0.3:
        kw["prune_tokens"] = True
    if r.random() < 0.5:
        kw["seed"] = r.getrandbits(64)
    if r.random() < 0.3:
        kw["convention"] = _convention(r)
    if edge:
        kw = dict(kw, budget_macs=float(uvc.count(sc.spec).macs) * r.choice([1.0, 1 - 1e-16, 0.999]))
    slots = {k: (O("int") if k == "seed" else O("convention") if k == "convention" else S if k == "budget_macs"
                 else _hyper_slot(k, v)) for k, v in kw.items()}
    return _api("Solver", uvc.Solver, [sc.spec, budget], kw, [O("spec"), S], slots)


def _api_solver_follow(r, c, s: Snapshot) -> tuple:
    """A valid call (name, fn(solver)) on a `uvc.Solver` of snapshot ``s``'s spec and config."""
    sc = _case_of(c, s)
    k = r.randrange(len(sc.scores))
    name = r.choice(["stats", "step", "sample_gates", "masks", "plan", "state_fields"])
    epoch = s.epoch + r.random()
    round_to = r.choice([1, 8])
    fns = {
        "stats": lambda o: o.stats(), "masks": lambda o: o.masks(), "plan": lambda o: o.plan(round_to),
        "state_fields": lambda o: o.state_fields(), "sample_gates": lambda o: o.sample_gates(epoch),
        "step": lambda o: o.step(*sc.scores[k], sc.gate_grads[k], lr=1e-3, epoch=epoch,
                                 token_scores=sc.token_scores[k] if s.tokens else None),
    }
    return name, fns[name]


def _solver(r, c, tokens=False) -> tuple[Snapshot, Any]:
    s = _snap(r, c, tokens=tokens)
    return s, api_solver(s)


def _api_solver_probe(r, c, s: Snapshot, solver) -> Probe:
    # The wrapper swaps its core on a successful load_state_dict: read it at check time.
    return Probe(solver, lambda: solver._core.save(), _api_solver_follow(r, c, s),
                 lambda: solver._core.load(solver._core.save()))


def _api_method(target: str, r, c, s: Snapshot, solver, fn, args, kwargs, slots, kwslots, names=None) -> Call:
    call = _api(target, fn, args, kwargs, slots, kwslots, names)
    call.probe = _api_solver_probe(r, c, s, solver)
    return call


def b_api_solver_step(r, c, edge):
    s, solver = _solver(r, c, tokens=r.random() < 0.3)
    sc = _case_of(c, s)
    k = r.randrange(len(sc.scores))
    scores = list(_scores(r, sc, edge and r.random() < 0.5))
    if r.random() < 0.5:
        solver.sample_gates(s.epoch)
    args = [*scores, sc.gate_grads[k] if r.random() < 0.7 else None]
    kwargs = dict(lr=r.choice([1e-3, 0.1]), epoch=s.epoch + r.random())
    kwslots = {"lr": S, "epoch": S}
    if s.tokens and r.random() < 0.8:
        kwargs["token_scores"] = sc.token_scores[k]
        kwslots["token_scores"] = A()
    if edge and r.random() < 0.6:
        # The arrays a step returns are the solver's own and overwritten by its next step:
        # passing them back as scores aliases its outputs.
        res = solver.step(*scores, None, lr=1e-3, epoch=kwargs["epoch"])
        which = r.randrange(3)
        args[which] = (res.head_factor, res.dim_factor, res.neuron_factor)[which]
    return _api_method("Solver.step", r, c, s, solver, solver.step, args, kwargs, [A(), A(), A(), A()], kwslots,
                       ["head_scores", "dim_scores", "neuron_scores", "gate_grad"])


def b_api_solver_sample_gates(r, c, edge):
    s, solver = _solver(r, c)
    return _api_method("Solver.sample_gates", r, c, s, solver, solver.sample_gates, [_epoch(r, s, edge)], {}, [S], {})


def b_api_solver_masks(r, c, edge):
    s, solver = _solver(r, c)
    return _api_method("Solver.masks", r, c, s, solver, solver.masks, [], {}, [], {})


def b_api_solver_plan(r, c, edge):
    s, solver = _solver(r, c)
    rt = r.choice([1, 2, 3, 8, 2 ** 20, 2 ** 62]) if edge else r.choice([1, 2, 4, 8])
    if r.random() < 0.3:
        return _api_method("Solver.plan", r, c, s, solver, solver.plan, [], {"round_to": rt, "fit": r.random() < 0.5},
                           [], {"round_to": O("int"), "fit": O("bool")})
    return _api_method("Solver.plan", r, c, s, solver, solver.plan, [rt], {}, [O("int")], {})


_QUERIES = ("stats", "token_keep", "gate_decisions", "expected_macs", "state_dict", "state_fields")


def b_api_solver_queries(r, c, edge):
    s, solver = _solver(r, c)
    name = r.choice(_QUERIES)
    return _api_method("Solver.queries", r, c, s, solver, getattr(solver, name), [], {}, [], {}, [name])


def _state_dict(r, c) -> tuple[Snapshot, dict]:
    s = _snap(r, c)
    return s, s.state_dict


def b_api_solver_load_state_dict(r, c, edge):
    s, solver = _solver(r, c)
    sc = _case_of(c, s)
    d = r.choice(sc.snaps).state_dict  # any state of the same spec, possibly another config
    return _api_method("Solver.load_state_dict", r, c, s, solver, solver.load_state_dict, [d], {}, [J], {})


def b_api_solver_from_state_dict(r, c, edge):
    s, d = _state_dict(r, c)
    return _api("Solver.from_state_dict", uvc.Solver.from_state_dict, [d], {}, [J], {})


def b_api_sampler(r, c, edge):
    return _api("usdc.GroupSampler", usdc.GroupSampler, [r.choice([0, 1, 2 ** 64 - 1]) if edge else r.getrandbits(64)],
                {}, [O("int")], {})


def _sampler(r, c):
    s = usdc.GroupSampler(0)
    s._core.load(r.choice(c.sampler_bytes))
    return s


def _api_sampler_call(target: str, r, s, fn, args, kwargs, slots, kwslots) -> Call:
    call = _api(target, fn, args, kwargs, slots, kwslots)
    n, cols = _batch(r, False), r.randint(0, 8)
    call.probe = Probe(s, lambda: s._core.save(), ("sample", lambda o: o.sample(n, cols)),
                       lambda: s.load_state_dict(s.state_dict()))
    return call


def b_api_sampler_sample(r, c, edge):
    s = _sampler(r, c)
    grouping = r.choice(usdc.GROUPINGS)
    cols = r.choice([0, 1, 4096]) if edge else r.randint(0, 8)
    args, slots = [_batch(r, edge), cols], [O("int"), O("int")]
    if r.random() < 0.7:
        args.append(grouping)
        slots.append(O("str"))
    return _api_sampler_call("usdc.GroupSampler.sample", r, s, s.sample, args, {}, slots, {})


def b_api_sampler_noise(r, c, edge):
    s = _sampler(r, c)
    return _api_sampler_call("usdc.GroupSampler.noise", r, s, s.noise,
                             [r.choice([0, 1, 1 << 16]) if edge else r.randint(0, 16)], {}, [O("int")], {})


def b_api_sampler_load(r, c, edge):
    s = _sampler(r, c)
    return _api_sampler_call("usdc.GroupSampler.load_state_dict", r, s, s.load_state_dict,
                             [r.choice(c.sampler_dicts)], {}, [J], {})


def b_api_group_sizes(r, c, edge):
    return _api("usdc.group_sizes", usdc.group_sizes, [_batch(r, edge)], {}, [O("int")], {})


def b_api_whole_batch(r, c, edge):
    return _api("usdc.whole_batch", usdc.whole_batch, [_batch(r, edge), r.randint(0, 8)], {}, [O("int"), O("int")], {})


def b_api_group_gates(r, c, edge):
    x, groups, noise = _gate_inputs(r, edge)
    kw, ks = {}, {}
    if r.random() < 0.7:
        kw["tau"], ks["tau"] = _tau(r, edge), S
    if r.random() < 0.5:
        kw["straight_through"], ks["straight_through"] = r.random() < 0.5, O("bool")
    return _api("usdc.group_gates", usdc.group_gates, [x, groups, noise], kw, [A(), A("q"), A()], ks)


def b_api_group_gates_backward(r, c, edge):
    x, groups, noise = _gate_inputs(r, edge)
    ng = np.random.default_rng(r.getrandbits(32))
    args, slots = [x, groups, noise, ng.normal(size=x.shape)], [A(), A("q"), A(), A()]
    if r.random() < 0.6:
        args.append(ng.normal(size=x.shape))
        slots.append(A())
    kw, ks = ({"tau": _tau(r, edge)}, {"tau": S}) if r.random() < 0.7 else ({}, {})
    return _api("usdc.group_gates_backward", usdc.group_gates_backward, args, kw, slots, ks)


def b_api_resource_loss(r, c, edge):
    sc = c.case(r)
    ins = _loss_inputs(r, sc, edge)
    names = usdc._LOSS_INPUTS
    kw = {n: a for n, a in zip(names, ins)}
    if ins[4].shape[1] == 0 and r.random() < 0.5:
        del kw["gate_macs"], kw["gate_probs"]
    target, gamma, dual = _loss_scalars(r, edge)
    kw["target"] = target
    if r.random() < 0.5:
        kw["gamma"] = gamma
    if r.random() < 0.5:
        kw["dual"] = dual
    if r.random() < 0.3:
        kw["convention"] = _convention(r)
    ks = {k: (A() if k in names else O("convention") if k == "convention" else S) for k in kw}
    return _api("usdc.resource_loss", usdc.resource_loss, [sc.spec], kw, [O("spec")], ks)


# name -> (builder, weight). Native calls get most of the inputs.
TARGETS: dict[str, tuple[Callable, float]] = {
    "native.layouts": (b_layouts, 0.3),
    "native.cost_exact": (b_cost_exact, 3), "native.cost_expected": (b_cost_expected, 3),
    "native.latency_exact": (b_latency_exact, 2), "native.latency_expected": (b_latency_expected, 2),
    "native.group_gates": (b_group_gates, 3), "native.group_gates_backward": (b_group_gates_backward, 3),
    "native.resource_loss": (b_resource_loss, 4),
    "native.gram_accumulate": (b_gram_accumulate, 2), "native.ridge_solve": (b_ridge_solve, 2),
    "native.Solver": (b_solver_new, 3), "native.Solver.layout": (b_solver_layout, 0.5),
    "native.Solver.sample_gates": (b_solver_sample_gates, 3), "native.Solver.step": (b_solver_step, 5),
    "native.Solver.masks": (b_solver_masks, 2), "native.Solver.plan": (b_solver_plan, 3),
    "native.Solver.summary": (b_solver_summary, 1.5), "native.Solver.fields": (b_solver_fields, 1.5),
    "native.Solver.save": (b_solver_save, 0.7), "native.Solver.load": (b_solver_load, 5),
    "native.GroupSampler": (b_sampler_new, 1), "native.GroupSampler.group_count": (b_sampler_group_count, 1.5),
    "native.GroupSampler.sample": (b_sampler_sample, 3), "native.GroupSampler.save": (b_sampler_save, 0.5),
    "native.GroupSampler.load": (b_sampler_load, 3),
    "threads.shared": (b_threads_shared, 0.8), "threads.separate": (b_threads_separate, 0.5),
    "api.ViTSpec": (b_api_vitspec, 1), "api.ViTSpec.from_dict": (b_api_vitspec_from_dict, 1),
    "api.ViTSpec.from_name": (b_api_vitspec_from_name, 0.5), "api.count": (b_api_count, 1.5),
    "api.random_plan": (b_api_random_plan, 0.7), "api.ArchPlan.from_dict": (b_api_archplan_from_dict, 1),
    "api.relaxed_cost": (b_api_relaxed_cost, 1.5), "api.expected_cost": (b_api_expected_cost, 1.5),
    "api.Solver": (b_api_solver, 1.5), "api.Solver.step": (b_api_solver_step, 2),
    "api.Solver.sample_gates": (b_api_solver_sample_gates, 1), "api.Solver.masks": (b_api_solver_masks, 0.5),
    "api.Solver.plan": (b_api_solver_plan, 0.7), "api.Solver.queries": (b_api_solver_queries, 0.5),
    "api.Solver.load_state_dict": (b_api_solver_load_state_dict, 2),
    "api.Solver.from_state_dict": (b_api_solver_from_state_dict, 1),
    "api.usdc.GroupSampler": (b_api_sampler, 0.5), "api.usdc.GroupSampler.sample": (b_api_sampler_sample, 1),
    "api.usdc.GroupSampler.noise": (b_api_sampler_noise, 0.5),
    "api.usdc.GroupSampler.load_state_dict": (b_api_sampler_load, 1.5),
    "api.usdc.group_sizes": (b_api_group_sizes, 0.5), "api.usdc.whole_batch": (b_api_whole_batch, 0.5),
    "api.usdc.group_gates": (b_api_group_gates, 1.5),
    "api.usdc.group_gates_backward": (b_api_group_gates_backward, 1.5),
    "api.usdc.resource_loss": (b_api_resource_loss, 1.5),
}
_NAMES = list(TARGETS)
_CUM = list(np.cumsum([TARGETS[n][1] for n in _NAMES]))



# --------------------------------------------------------------------------------------------
# Mutators. Each returns a new value (never changes the corpus' arrays, which are read-only
# anyway) and a description.

class BadFloat:
    """A number whose conversion raises (TypeError, so that the exception the library lets
    through is an expected one: swallowing a user's exception is no better)."""

    def __float__(self):
        raise TypeError("BadFloat.__float__")

    def __index__(self):
        raise TypeError("BadFloat.__index__")

    def __repr__(self):
        return "BadFloat()"


class WrongFloat:
    """``__float__`` returns a str."""

    def __float__(self):
        return "1.0"

    def __repr__(self):
        return "WrongFloat()"


class SubArray(np.ndarray):
    pass


SPECIAL_FLOATS = [math.nan, -math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, -5e-324, 1e-310,
                  2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308, 1e300, -1.0, -1e-300,
                  0.5, 1.0, 2.0, 1e20, 2.0 ** 53 + 2, 2.0 ** 63, -2.0 ** 63, 2.0 ** 64, 4.5e15, 1 - 1e-16]
SPECIAL_INTS = [0, 1, -1, 2, -2, 3, 7, 64, 65, 1 << 20, (1 << 20) + 1, (1 << 20) - 1, 2 ** 31 - 1, 2 ** 31,
                2 ** 32, 2 ** 53 + 1, 2 ** 62, 2 ** 63 - 1, -2 ** 63, -2 ** 63 + 1]


def _scalar_replacements():
    return ([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, -1e300, -1.0, 0.0, 2.0 ** 63,
             2 ** 64, 10 ** 400, -10 ** 400, 2 ** 63 - 1, -1, 0, True, False, None, "1.0", b"1", [1.0], (1.0,), {},
             np.float32("nan"), np.float16("inf"), np.int64(-1), np.uint64(2 ** 64 - 1), np.bool_(True),
             np.longdouble("1e4000"), complex(1, 0), complex(0, 1), np.complex128(1), fractions.Fraction(1, 3),
             decimal.Decimal("NaN"), decimal.Decimal("1e400"), np.array(1.0), np.array([1.0]), np.array([]),
             np.array([1.0, 2.0]), np.array("x"), BadFloat(), WrongFloat(), object(), float, np.datetime64(1, "s")])


SCALARS = _scalar_replacements()
WRONG_OBJECTS = [None, "x", "", b"x", [], [1.0], (1,), {}, {"a": 1}, 1, -1, 1.5, math.nan, True, object(),
                 np.float64(math.nan), np.zeros(3), BadFloat(), set(), 10 ** 400]


def _any_random_value(r):
    return r.choice(SCALARS + WRONG_OBJECTS)


def _flip(v: int, r) -> int:
    """One bit of an int64 flipped (as an int64)."""
    u = (v & (2 ** 64 - 1)) ^ (1 << r.randrange(64))
    return u - 2 ** 64 if u >= 2 ** 63 else u


def _ctypes_array(a: np.ndarray):
    ct = ctypes.c_int64 if a.dtype.kind in "iub" else ctypes.c_double
    t = ct
    for n in reversed(a.shape):
        t = t * n
    obj = t()
    if a.size:
        ctypes.memmove(obj, np.ascontiguousarray(a, dtype=np.int64 if ct is ctypes.c_int64 else np.float64).ctypes.data,
                       a.size * 8)
    return obj


def _zero_size_ctypes(dtype: str, dims: list[int]):
    t = ctypes.c_int64 if dtype == "q" else ctypes.c_double
    for n in reversed(dims):
        t = t * n
    return t()


def _huge_zero_shape(a_shape, r):
    shape = list(a_shape) or [1]
    if r.random() < 0.3:
        shape.append(1)
    z = r.randrange(len(shape))
    shape[z] = 0
    others = [i for i in range(len(shape)) if i != z]
    if others:
        shape[r.choice(others)] = 1 << r.choice([20, 30, 36, 40, 44, 48, 56])
    return tuple(shape)


def mutate_array(a, slot: Slot, r) -> tuple[Any, str]:
    """A mutated version of array argument ``a``."""
    if not isinstance(a, np.ndarray):
        a = np.asarray(a) if not isinstance(a, (str, bytes, type(None))) else np.zeros(3)
    op = r.random()
    kind = "q" if a.dtype.kind in "iub" else "d"
    if op < 0.16:  # dtype
        dt = r.choice(["float32", "float16", "int32", "int64", "float64", "uint64", "int8", "bool", "object",
                       "complex128", "longdouble", ">f8", ">i8", "<f8", "<i8", "intp", "uintp", "V8", "M8[s]",
                       "structured", "U1"])
        if dt == "structured":
            b = np.zeros(a.shape, dtype=[("x", "f8")])
        elif dt == "M8[s]":
            b = np.zeros(a.shape, dtype=dt)
        elif dt == "V8":
            b = np.ascontiguousarray(a).view("V8") if a.dtype.itemsize == 8 else np.zeros(a.shape, "V8")
        else:
            with np.errstate(all="ignore"):
                b = a.astype(dt)
        return b, f"dtype -> {dt}"
    if op < 0.34:  # shape
        s = r.randrange(11)
        if s == 0:
            return a[None].copy(), "extra leading dim"
        if s == 1:
            return a[..., None].copy(), "extra trailing dim"
        if s == 2:
            return a.reshape(-1).copy(), "flattened"
        if s == 3:
            return (a[0].copy() if a.ndim and a.shape[0] else np.empty(a.shape[1:], a.dtype)), "first dim dropped"
        if s == 4:
            return np.ascontiguousarray(a.T), "transposed (contiguous)"
        if s == 5:
            n = r.randint(1, 3)
            ax = r.randrange(max(a.ndim, 1))
            b = np.concatenate([a.reshape(a.shape or (1,))] + [np.take(a.reshape(a.shape or (1,)), [0], axis=ax) if
                                                            a.size else np.zeros_like(a.reshape(a.shape or (1,)))] * n,
                               axis=ax) if a.ndim else np.array([a, a])
            return np.ascontiguousarray(b), f"grown by {n} along axis {ax}"
        if s == 6:
            ax = r.randrange(max(a.ndim, 1))
            return (np.ascontiguousarray(np.delete(a, -1, axis=ax)) if a.ndim and a.shape[ax] else a.copy()), \
                f"shrunk along axis {ax}"
        if s == 7:
            return np.array(a.reshape(-1)[0] if a.size else 0, dtype=a.dtype), "0-d array"
        if s == 8:
            shape = list(a.shape) or [1]
            shape[r.randrange(len(shape))] = 0
            return np.empty(shape, a.dtype), f"zero-size shape {tuple(shape)}"
        if s == 9:
            shape = _huge_zero_shape(a.shape, r)
            return np.empty(shape, a.dtype), f"huge zero-size shape {shape}"
        shape = tuple(r.choice([1, 2, 3, 5]) for _ in range(r.randint(1, 4)))
        return np.zeros(shape, a.dtype), f"random shape {shape}"
    if op < 0.46:  # layout
        s = r.randrange(8)
        if s == 0 and a.size:
            b = np.zeros(a.shape + (2,), a.dtype)
            b[..., 0] = a
            return b[..., 0], "non-contiguous (stride 2)"
        if s == 1 and a.ndim >= 2:
            return np.asfortranarray(a), "Fortran order"
        if s == 2 and a.ndim and a.shape[0] > 1:
            return a.copy()[::-1], "negative stride"
        if s == 3:
            shape = tuple(1 << r.choice([20, 30, 40]) for _ in range(r.randint(1, 3)))
            return np.broadcast_to(a.reshape(-1)[:1] if a.size else np.zeros(1, a.dtype), shape), \
                f"broadcast_to {shape} (stride 0)"
        if s == 4:
            b = a.copy()
            b.flags.writeable = False
            return b, "read-only"
        if s == 5 and a.size:
            b = np.lib.stride_tricks.as_strided(a.copy(), shape=a.shape, strides=(0,) * a.ndim)
            return b, "all strides 0"
        if s == 6:
            raw = np.zeros(a.size * a.dtype.itemsize + 8, np.uint8)
            off = 1 + r.randrange(7)
            b = np.frombuffer(raw.data, dtype=a.dtype, count=a.size, offset=off).reshape(a.shape)
            b[...] = a
            return b, f"misaligned (byte offset {off})"
        b = a.copy()
        b.flags.writeable = False
        return b, "read-only"
    if op < 0.80:  # values
        b = np.array(a, copy=True)
        if not b.size:
            return b, "values (empty: unchanged)"
        flat = b.reshape(-1)
        s = r.randrange(5)
        if s == 0:  # bit flips
            bits = flat.view(np.uint64) if b.dtype.itemsize == 8 else None
            if bits is None:
                return b, "values (unchanged)"
            desc = []
            for _ in range(r.randint(1, 3)):
                i, bit = r.randrange(flat.size), r.randrange(64)
                bits[i] ^= np.uint64(1 << bit)
                desc.append(f"[{i}] bit {bit}")
            return b, "bit flips " + ", ".join(desc)
        if s == 1:  # special values at a few positions
            desc = []
            for _ in range(r.randint(1, 3)):
                i = r.randrange(flat.size)
                v = r.choice(SPECIAL_INTS) if kind == "q" else r.choice(SPECIAL_FLOATS)
                try:
                    flat[i] = v
                except (OverflowError, ValueError):
                    continue
                desc.append(f"[{i}]={v!r}")
            return b, "values " + ", ".join(desc)
        if s == 2:  # fill
            v = r.choice(SPECIAL_INTS) if kind == "q" else r.choice(SPECIAL_FLOATS)
            try:
                flat[:] = v
            except (OverflowError, ValueError):
                pass
            return b, f"all values {v!r}"
        if s == 3:
            with np.errstate(all="ignore"):
                flat[:] = -flat
            return b, "negated"
        perm = np.random.default_rng(r.getrandbits(32)).permutation(flat.size)
        flat[:] = flat[perm].copy()
        return b, "values permuted"
    if op < 0.95:  # another type
        s = r.randrange(17)
        makers = [
            lambda: (None, "None"), lambda: ("spam", "str"), lambda: (a.tolist(), "nested list"),
            lambda: (tuple(a.reshape(-1).tolist()), "tuple"), lambda: (a.tobytes(), "bytes"),
            lambda: (bytearray(a.tobytes()), "bytearray"), lambda: ({"data": a}, "dict"),
            lambda: (7, "int"), lambda: (1.5, "float"),
            lambda: (memoryview(np.ascontiguousarray(a)), "memoryview (same data)"),
            lambda: (memoryview(np.ascontiguousarray(a)).cast("B"), "memoryview cast to bytes"),
            lambda: ((array.array("q" if kind == "q" else "d", a.reshape(-1).tolist()), "array.array")
                     if a.ndim <= 1 else (a.reshape(-1).tolist(), "flat list")),
            lambda: (_ctypes_array(a), "ctypes array (same data)"),
            lambda: ((lambda dims: (_zero_size_ctypes(kind, dims), f"ctypes zero-size {tuple(dims)}"))(
                r.choice([[1 << 40, 1 << 40, 0], [1 << 62, 4, 0], [0, 1 << 62, 1 << 62], [1 << 32, 1 << 32, 1 << 32, 0],
                          [3, 0], [1 << 63 - 1, 0]]))),
            lambda: (a.reshape(-1)[0] if a.size else np.float64(1), "numpy scalar"),
            lambda: (a.view(SubArray), "ndarray subclass"),
            lambda: (np.ma.masked_array(a, mask=np.zeros(a.shape, bool)), "masked array"),
        ]
        return makers[s]()
    return (object(), "object()") if r.random() < 0.5 else (np.zeros(a.shape, object), "object array of zeros")


def mutate_scalar(v, r) -> tuple[Any, str]:
    new = r.choice(SCALARS)
    return new, f"scalar -> {new!r}"


# ---- saved states (bytes) ----
# Layout (Sources/UVCNative/Archive.swift): 'uvc.arch', tag u32, version u32, then 64-bit words,
# each run of doubles preceded by its length.

_HEADER = 16


def _u32(b: bytes, at: int, v: int) -> bytes:
    return b[:at] + struct.pack("<I", v & 0xFFFFFFFF) + b[at + 4:]


def mutate_bytes(v, r, c: Corpus) -> tuple[Any, str]:
    """A damaged, foreign or differently typed version of a saved state."""
    try:
        b = memoryview(v).tobytes()  # a buffer an earlier mutation made (e.g. a uint8 array)
    except (TypeError, ValueError):
        b = b""
    n = len(b)
    s = r.randrange(16)
    if s == 0:
        k = r.choice([0, 1, 8, 15, 16, 20, 24, n - 1, n - 8, n - 9] + [r.randrange(max(n, 1))] * 3)
        k = max(0, min(k, n))
        return b[:k], f"truncated to {k} of {n} bytes"
    if s == 1:
        pad = r.choice([b"\0", b"\0" * 8, b"x", bytes(range(16)), b[-8:]])
        return b + pad, f"{len(pad)} bytes appended"
    if s == 2 and n:
        out = bytearray(b)
        flips = []
        for _ in range(r.randint(1, 4)):
            i = r.randrange(n) if r.random() < 0.7 else r.randrange(min(n, _HEADER + 8))
            bit = r.randrange(8)
            out[i] ^= 1 << bit
            flips.append(f"[{i}] bit {bit}")
        return bytes(out), "bit flips " + ", ".join(flips)
    if s == 3 and n >= _HEADER:
        tag = r.choice([0, 1, 2, 3, 255, 2 ** 31, 2 ** 32 - 1])
        return _u32(b, 8, tag), f"tag -> {tag}"
    if s == 4 and n >= _HEADER:
        ver = r.choice([0, 2, 3, 255, 2 ** 31, 2 ** 32 - 1])
        return _u32(b, 12, ver), f"format version -> {ver}"
    if s == 5 and n >= 8:
        magic = r.choice([b"UVC.ARCH", b"uvc.arcH", b"\0" * 8, b"uvc.arc\0"])
        return magic + b[8:], f"magic -> {magic!r}"
    if s in (6, 7) and n >= _HEADER + 8:
        # One 64-bit word of the payload (a length or a value) replaced.
        k = r.randrange((n - _HEADER) // 8)
        at = _HEADER + 8 * k
        if r.random() < 0.5:
            x = r.choice(SPECIAL_FLOATS)
            word, desc = struct.pack("<d", x), repr(x)
        else:
            x = r.choice(SPECIAL_INTS + [2 ** 63, 2 ** 64 - 1, 2 ** 62 + 1])
            word, desc = struct.pack("<Q", x % 2 ** 64), f"int {x}"
        return b[:at] + word + b[at + 8:], f"payload word {k} -> {desc}"
    if s == 8 and n > _HEADER:
        fill = r.choice([0, 0xFF])
        return b[:_HEADER] + bytes([fill]) * (n - _HEADER), f"payload all 0x{fill:02x}"
    if s == 9:
        other = r.choice(c.foreign_states())
        return other, f"another object's state ({len(other)} bytes, tag {other[8] if len(other) > 8 else '?'})"
    if s == 10 and n >= _HEADER + 8:
        # Two payload words swapped, or the payload shifted by a word.
        if r.random() < 0.5:
            return b[:_HEADER] + b[_HEADER + 8:] + b[_HEADER:_HEADER + 8], "payload rotated by one word"
        i, j = sorted(r.sample(range((n - _HEADER) // 8), 2)) if (n - _HEADER) // 8 >= 2 else (0, 0)
        w = [b[_HEADER + 8 * k:_HEADER + 8 * k + 8] for k in range((n - _HEADER) // 8)]
        w[i], w[j] = w[j], w[i]
        return b[:_HEADER] + b"".join(w) + b[_HEADER + 8 * len(w):], f"payload words {i} and {j} swapped"
    if s == 11:
        return b"", "empty"
    # Other types: byte buffers (accepted like bytes) and things that are not.
    makers = [
        lambda: (bytearray(b), "bytearray"), lambda: (memoryview(b), "memoryview"),
        lambda: (np.frombuffer(b, np.uint8), "uint8 array"), lambda: (array.array("B", b), "array.array('B')"),
        lambda: (np.frombuffer(b, np.uint8).copy()[::2] if n > 1 else np.zeros(3, np.uint8)[::2],
                 "non-contiguous uint8 view"),
        lambda: (np.frombuffer(b[:n - n % 8], np.int64), "viewed as int64"),
        lambda: (np.frombuffer(b[:n - n % 8], np.float64), "viewed as float64"),
        lambda: (np.frombuffer(b, np.int8), "int8 array"),
        lambda: ((ctypes.c_ubyte * n).from_buffer_copy(b), "ctypes c_ubyte array"),
        lambda: ((ctypes.c_char * n).from_buffer_copy(b), "ctypes c_char array"),
        lambda: (base64.b64encode(b).decode(), "base64 str"), lambda: (b.hex(), "hex str"), lambda: (list(b), "list"),
        lambda: (None, "None"), lambda: (0, "int"), lambda: (np.frombuffer(b * 2, np.uint8).reshape(2, n), "2-d uint8"),
        lambda: (np.broadcast_to(np.frombuffer(b[:1] or b"\0", np.uint8), (1 << 40,)), "broadcast (stride 0)"),
        lambda: (memoryview(bytearray(b)).toreadonly(), "read-only memoryview"),
    ]
    return r.choice(makers)()


def mutate_state_text(d: dict, r, c: Corpus) -> tuple[dict, str]:
    """A state dict with its base64 ``state`` damaged (the other keys: `mutate_json`)."""
    text = d["state"]
    s = r.randrange(10)
    if s <= 2:
        raw, desc = mutate_bytes(base64.b64decode(text), r, c)
        if not isinstance(raw, (bytes, bytearray)):
            raw = bytes(np.asarray(raw).tobytes()) if isinstance(raw, np.ndarray) else b""
        new, what = base64.b64encode(bytes(raw)).decode(), f"bytes {desc}"
    elif s == 3 and text:
        i = r.randrange(len(text))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        ch = r.choice(alphabet.replace(text[i], "") if text[i] in alphabet else alphabet)
        new, what = text[:i] + ch + text[i + 1:], f"char {i} {text[i]!r} -> {ch!r}"
    elif s == 4 and text:
        i = r.randrange(len(text))
        ch = r.choice(["!", "\n", " ", "=", "-", "_", "é", "\0", "=="])
        new, what = text[:i] + ch + text[i + 1:], f"char {i} -> {ch!r} (not base64)"
    elif s == 5:
        k = r.choice([0, 1, 2, 3, 4, len(text) - 1, len(text) - 4, r.randrange(len(text) + 1)])
        new, what = text[:max(k, 0)], f"text truncated to {k}"
    elif s == 6:
        new, what = text.rstrip("="), "padding removed"
    elif s == 7:
        new, what = text.replace("+", "-").replace("/", "_") + r.choice(["", "AAAA", "===="]), "urlsafe / extra"
    elif s == 8:
        other = r.choice(c.foreign_states())
        new, what = base64.b64encode(other).decode(), f"another object's state ({len(other)} bytes)"
    else:
        new = r.choice([base64.b64decode(text), None, 0, [text], text.encode(), {"state": text}, " " + text])
        what = f"-> {type(new).__name__}"
    return dict(d, state=new), f"['state'] {what}"


# ---- method calls: the object itself ----

class Reentrant:
    """A number whose conversion calls a method on the object the call runs on (which is
    busy: the bridge must raise RuntimeError there, or the conversion must not happen)."""

    def __init__(self, obj, action: str) -> None:
        self.obj, self.action = obj, action

    def __float__(self):
        try:
            if self.action == "save":
                self.obj.save()
            elif self.action == "load":
                self.obj.load(self.obj.save())
            else:
                getattr(self.obj, self.action)()
        except RuntimeError:
            pass
        return 1.0

    __index__ = lambda self: int(self.__float__())  # noqa: E731

    def __repr__(self):
        return f"Reentrant({self.action})"


def mutate_method(call: Call, r) -> str | None:
    """For a native method call: the method called on an object of the other type, an argument
    that is the object itself, or a re-entrant number."""
    obj = call.probe.obj
    method = call.target.rsplit(".", 1)[1]
    s = r.randrange(3)
    if s == 0:
        others = [object(), None, 1, "x"] + ([_native.GroupSampler(1)] if isinstance(obj, _native.Solver) else [])
        other = r.choice(others)
        unbound = getattr(type(obj), method)
        call.fn = lambda *a, **k: unbound(other, *a, **k)
        return f"unbound {type(obj).__name__}.{method} called on {other!r}"
    if not call.args:
        return None
    i = r.randrange(len(call.args))
    if s == 1:
        call.args[i] = obj
        return f"{_name(call, 'a', i)}: -> the object itself"
    call.args[i] = Reentrant(obj, r.choice(["save", "load"]))
    return f"{_name(call, 'a', i)}: -> a number whose __float__ calls the object ({call.args[i]!r})"


def _other_spec(r, c: Corpus, spec):
    return r.choice([x.spec for x in c.cases if x.spec != spec] or [spec])


def mutate_obj(v, slot: Slot, r, c: Corpus) -> tuple[Any, str]:
    tag = slot.tag
    if r.random() < 0.35:
        new = r.choice(WRONG_OBJECTS)
        return new, f"-> {new!r}"
    if tag == "spec":
        opts = [lambda: (_other_spec(r, c, v), "another spec"), lambda: (v.to_dict(), "spec as dict"),
                lambda: (v.name or "deit_tiny_patch16_224", "spec as name"), lambda: (v.encoded, "spec.encoded"),
                lambda: (dataclasses.replace(v, num_classes=0), "num_classes 0 spec")]
        return r.choice(opts)()
    if tag == "plan":
        sc = c.case(r)
        opts = [lambda: (r.choice(sc.arch_plans), "a plan (maybe of another spec)"),
                lambda: (v.to_dict() if v is not None else {}, "plan as dict"),
                lambda: (v.counts if v is not None else np.zeros((1, len(PLAN_ROW)), np.int64), "plan counts array")]
        return r.choice(opts)()
    if tag == "convention":
        choices = [uvc.Convention(layer_norm=math.nan), uvc.Convention(layer_norm=-1.0),
                   uvc.Convention(layer_norm=math.inf), uvc.Convention(layer_norm=1e308),
                   uvc.Convention(layer_norm=10 ** 400), uvc.Convention(softmax="yes"),
                   uvc.Convention(layer_norm=None), uvc.Convention(head=2), uvc.Convention(bias=-1),
                   uvc.Convention(layer_norm=5e-324), "UVC", "fvcore ", "", "full"]
        new = r.choice(choices)
        return new, f"convention -> {new!r}"
    if tag == "rng":
        new = r.choice([0, np.random.RandomState(0), random.Random(0), np.random.default_rng])
        return new, f"rng -> {new!r}"
    if tag == "bool":
        new = r.choice([0, 1, 2, "True", np.bool_(True), None, 1.0, math.nan, np.array([True])])
        return new, f"bool -> {new!r}"
    if tag == "int":
        new = r.choice(SPECIAL_INTS + [2 ** 64, 2 ** 64 - 1, -2 ** 64, 10 ** 400, 1.0, 1.5, np.int8(-1),
                                       np.uint64(2 ** 64 - 1), np.int64(2 ** 40), math.nan, True, "3", np.float64(2.0)])
        return new, f"int -> {new!r}"
    if tag == "str":
        new = r.choice(["", "HALVING", "halving ", "deit", "batch\0", "x" * 10000, 0, None, b"halving",
                        "gumbel", "part", "softl0", "block", "sample", "mixed"])
        return new, f"str -> {new!r}"
    if tag == "seq":
        new = r.choice([[], [math.nan], [1.0] * 1000, "abc", (1, 2, 3), [[1.0]], [None], np.array([[1, 2]]),
                        [10 ** 400], [math.inf, -1.0], [-1], 0, (0, 0), (1 << 20, 1 << 20), (1 << 21,), [1.5, 2.5]])
        return new, f"sequence -> {new!r}"[:200]
    new = _any_random_value(r)
    return new, f"-> {new!r}"


def mutate_json(obj, r, depth: int = 0) -> tuple[Any, str]:
    """``obj`` with one change somewhere in its tree (copy-on-write along the path)."""
    if isinstance(obj, dict) and obj and depth < 8 and r.random() < 0.8:
        k = r.choice(list(obj))
        new = dict(obj)
        child, desc = mutate_json(obj[k], r, depth + 1)
        new[k] = child
        return new, f"[{k!r}]{desc}"
    if isinstance(obj, (list, tuple)) and obj and depth < 8 and r.random() < 0.75:
        i = r.randrange(len(obj))
        new = list(obj)
        child, desc = mutate_json(obj[i], r, depth + 1)
        new[i] = child
        return new, f"[{i}]{desc}"
    if isinstance(obj, dict):
        s = r.randrange(5)
        if s == 0 and obj:
            k = r.choice(list(obj))
            new = dict(obj)
            del new[k]
            return new, f" key {k!r} deleted"
        if s == 1:
            return dict(obj, bogus=1), " extra key 'bogus'"
        if s == 2:
            return list(obj.values()), " dict -> list of values"
        if s == 3:
            return {}, " -> {}"
    if isinstance(obj, (list, tuple)):
        s = r.randrange(6)
        if s == 0:
            return list(obj)[:-1], " last element dropped"
        if s == 1:
            return list(obj) + list(obj)[-1:] * r.randint(1, 3) if obj else [0], " elements appended"
        if s == 2:
            return [], " -> []"
        if s == 3:
            return np.asarray(obj, dtype=object) if r.random() < 0.3 else [list(obj)], " nested / object array"
        if s == 4:
            return "".join(map(str, obj))[:50], " list -> str"
    if isinstance(obj, bool):
        new = r.choice([0, 1, "true", None, 2])
    elif isinstance(obj, int):
        new = r.choice([_flip(obj, r), _flip(obj, r), r.choice(SPECIAL_INTS), 2 ** 64, 10 ** 400,
                        float(obj), str(obj), None, -obj, math.nan, obj + 1])
    elif isinstance(obj, float):
        if r.random() < 0.4 and math.isfinite(obj):
            u = np.array([obj]).view(np.uint64)
            u ^= np.uint64(1 << r.randrange(64))
            new = float(u.view(np.float64)[0])
        else:
            new = r.choice(SPECIAL_FLOATS + [10 ** 400, str(obj), None, [obj], True])
    elif isinstance(obj, str):
        new = r.choice(["", obj.upper(), obj + " ", "uvc.solver/1", "uvc.plan/2", None, 1, "\x00", "é" * 3])
    else:
        new = r.choice(WRONG_OBJECTS)
    return new, f" {obj!r} -> {new!r}"[:200]


def _slot_list(call: Call):
    """(where, key, slot) for every argument: where 'a' positional, 'k' keyword."""
    out = [("a", i, s) for i, s in enumerate(call.slots)]
    out += [("k", k, s) for k, s in call.kwslots.items()]
    return out


def _get(call, where, key):
    return call.args[key] if where == "a" else call.kwargs[key]


def _set(call, where, key, value):
    if where == "a":
        call.args[key] = value
    else:
        call.kwargs[key] = value


def _name(call, where, key):
    return f"'{call.names[key]}'" if where == "a" and key < len(call.names) else f"{key!r}"


def mutate_alias(call: Call, r) -> str | None:
    """Makes an output (or, without outputs, any array) share memory with another array argument:
    the same array, a partial overlap, or adjacent but disjoint (which is fine)."""
    slots = [(w, k, s) for w, k, s in _slot_list(call) if s.kind == "arr" and isinstance(_get(call, w, k), np.ndarray)]
    outs = [x for x in slots if x[2].out]
    if len(slots) < 2:
        return None
    o = r.choice(outs or slots)
    j = r.choice([x for x in slots if x is not o])
    a, b = np.asarray(_get(call, *j[:2])), np.asarray(_get(call, *o[:2]))
    if a.dtype.itemsize != 8 or b.dtype.itemsize != 8:
        return None
    mode = r.choice(["same", "overlap", "adjacent"])
    if mode == "same":
        c = np.array(a, copy=True)
        _set(call, *j[:2], c)
        _set(call, *o[:2], c)
        return f"alias: {_name(call, *o[:2])} is {_name(call, *j[:2])} (same array)"
    la, lb = a.size, b.size
    overlap = r.randint(1, max(1, min(la, lb))) if mode == "overlap" else 0
    start = max(la - overlap, 0)
    buf = np.zeros(start + lb + la + 1, np.uint64)
    va = buf[:la].view(a.dtype).reshape(a.shape)
    va[...] = a
    vb = buf[start:start + lb].view(b.dtype).reshape(b.shape)
    if mode == "adjacent" or overlap == 0:
        vb[...] = b if b.size else vb
    _set(call, *j[:2], va)
    _set(call, *o[:2], vb)
    return f"alias: {_name(call, *o[:2])} {mode}s {_name(call, *j[:2])} by {overlap} elements"


def mutate_arity(call: Call, r) -> str:
    s = r.randrange(6)
    if s == 0 and call.args:
        i = r.randrange(len(call.args))
        del call.args[i]
        if i < len(call.slots):
            del call.slots[i]
        return f"argument {i} dropped"
    if s == 1:
        extra = r.choice([None, 0.0, np.zeros(1), call.args[-1] if call.args else 1])
        call.args.append(extra)
        call.slots.append(Slot("obj"))
        return f"extra argument {extra!r}"[:120]
    if s == 2 and len(call.args) >= 2:
        i, j = r.sample(range(len(call.args)), 2)
        call.args[i], call.args[j] = call.args[j], call.args[i]
        return f"arguments {i} and {j} swapped"
    if s == 3 and call.kwargs:
        k = r.choice(list(call.kwargs))
        del call.kwargs[k]
        call.kwslots.pop(k, None)
        return f"keyword {k!r} dropped"
    if s == 4:
        call.kwargs["bogus"] = 1
        call.kwslots["bogus"] = Slot("obj")
        return "unknown keyword 'bogus'"
    if s == 5 and call.native and call.args and call.names:
        call.kwargs[call.names[0]] = call.args[0]
        return f"keyword {call.names[0]!r} to a native function"
    n = r.randint(0, 2)
    call.args = call.args[:n]
    call.slots = call.slots[:n]
    call.kwargs = {}
    call.kwslots = {}
    return f"only the first {n} arguments"


def mutate(call: Call, r, c: Corpus) -> None:
    call.valid = False
    for _ in range(r.choice([1, 1, 1, 1, 2, 2, 3])):
        op = r.random()
        slots = _slot_list(call)
        try:
            if op < 0.08 or not slots:
                call.mutations.append(mutate_arity(call, r))
                continue
            if op < 0.16:
                d = mutate_alias(call, r)
                if d:
                    call.mutations.append(d)
                    continue
            if op < 0.21 and call.native and call.probe is not None:
                d = mutate_method(call, r)
                if d:
                    call.mutations.append(d)
                    continue
        except Exception:  # noqa: BLE001 - does not apply to this (already mutated) call
            continue
        where, key, slot = r.choice(slots)
        v = _get(call, where, key)
        try:
            if slot.kind == "arr":
                new, d = mutate_array(v, slot, r)
            elif slot.kind == "scalar":
                new, d = mutate_scalar(v, r)
            elif slot.kind == "bytes":
                new, d = mutate_bytes(v, r, c)
            elif slot.kind == "json":
                if isinstance(v, dict) and isinstance(v.get("state"), str) and r.random() < 0.5:
                    new, d = mutate_state_text(v, r, c)
                else:
                    new, d = mutate_json(v, r)
            else:
                new, d = mutate_obj(v, slot, r, c)
        except Exception:  # noqa: BLE001 - a mutator that does not apply to this value (e.g. already mutated)
            continue
        _set(call, where, key, new)
        call.mutations.append(f"{_name(call, where, key)}: {d}")


# --------------------------------------------------------------------------------------------
# One input.

SEED_FRACTION = 0.04
EDGE_FRACTION = 0.12


def case_rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 0x9E3779B97F4A7C15 + index)


def make_case(c: Corpus, seed: int, index: int) -> Call:
    """Input ``index``: the first 2 × len(TARGETS) are seed calls of each target in turn; later
    ones pick a target by weight, then mutate (all but a few)."""
    r = case_rng(seed, index)
    if index < 2 * len(_NAMES):
        name, valid, edge = _NAMES[index % len(_NAMES)], True, False
    else:
        x = r.random() * _CUM[-1]
        name = _NAMES[next(i for i, v in enumerate(_CUM) if v > x)]
        valid = r.random() < SEED_FRACTION
        edge = not valid and r.random() < EDGE_FRACTION
    call = TARGETS[name][0](r, c, edge)
    call.target = name
    if edge:
        call.valid = False
        call.mutations.append("edge sizes/values")
    if not valid and not call.fixed:
        mutate(call, r, c)
    elif call.fixed:
        call.valid = valid
    return call


def _target_of(seed: int, index: int) -> str:
    """The target `make_case` picks for input ``index`` (without building it)."""
    if index < 2 * len(_NAMES):
        return _NAMES[index % len(_NAMES)]
    x = case_rng(seed, index).random() * _CUM[-1]
    return _NAMES[next(i for i, v in enumerate(_CUM) if v > x)]


def _nonfinite(call: Call, result) -> bool:
    if isinstance(result, float) and not math.isfinite(result):
        return True
    if call.native:
        for a, s in zip(call.args, call.slots):
            if s.kind == "arr" and s.out and isinstance(a, np.ndarray) and a.dtype == np.float64 and a.size \
                    and not np.isfinite(a).all():
                return True
    return False


# Messages of the core's post-condition checks: a ValueError with one of them means accepted
# inputs led to an invalid state.
INVARIANT_MARKERS = ("left an invalid state", "this is a bug")


def _invoke(call: Call) -> tuple[str, str | None, Any]:
    """Runs the call itself: ('ok' | 'TypeError' | 'ValueError' | 'other', detail, result)."""
    try:
        result = call.fn(*call.args, **call.kwargs)
    except TypeError as e:
        return "TypeError", str(e)[:300], None
    except ValueError as e:
        if any(m in str(e) for m in INVARIANT_MARKERS):
            # The core's own consistency check after accepting the inputs: a bug, not bad input.
            return "other", f"ValueError (core invariant): {str(e)[:300]} [at the core's state check]", None
        return "ValueError", str(e)[:300], None
    except Exception as e:  # noqa: BLE001 - the point
        tb = traceback.extract_tb(e.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno} in {tb[-1].name}" if tb else "?"
        return "other", f"{type(e).__name__}: {str(e)[:300]} [at {where}]", None
    return "ok", None, result


def _first_difference(a, b) -> str:
    if not isinstance(a, (bytes, bytearray)) or not isinstance(b, (bytes, bytearray)):
        return "differs"
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{len(a)} -> {len(b)} bytes, first difference at byte {i}"


def _check_object(call: Call, outcome: str, detail: str | None, before) -> str | None:
    """The probe's checks after a method call (see `Probe`); a message when one fails."""
    p = call.probe
    raised = outcome in ("TypeError", "ValueError")
    what = f"a failed call ({outcome}: {(detail or '')[:120]})" if raised else \
        ("a seed call" if call.valid else "an accepted mutated call")
    try:
        after = p.state()
    except Exception as e:  # noqa: BLE001
        return f"save() after {what} raised {type(e).__name__}: {str(e)[:200]}"
    if raised and after != before:
        return f"state changed by {what}: save() {_first_difference(before, after)}"
    if not raised and call.native and call.target.endswith(".load") and call.args:
        try:
            given = memoryview(call.args[0]).tobytes()
        except (TypeError, ValueError):
            given = None
        if given is not None and after != given:
            return f"load accepted {len(given)} bytes but save() then returns others " \
                   f"({_first_difference(given, after)})"
    name, fn = p.follow
    try:
        fn(p.obj)
    except Exception as e:  # noqa: BLE001 - any exception: the call is valid
        return f"valid {name}() after {what} raised {type(e).__name__}: {str(e)[:200]}"
    if p.roundtrip is not None:
        try:
            p.roundtrip()
        except Exception as e:  # noqa: BLE001
            return f"load(save()) after {what} and a valid {name}() raised {type(e).__name__}: {str(e)[:200]}"
    return None


def run_case(call: Call) -> tuple[str, str | None]:
    """Runs one call: ('ok' | 'ok_nonfinite' | 'TypeError' | 'ValueError' | 'other' |
    'use_after', detail). A call on an object is checked afterwards (`Probe`): 'use_after'
    when a failed call changed the object's state or a valid call on it then fails."""
    before = None
    if call.probe is not None:
        try:
            before = call.probe.state()
        except Exception as e:  # noqa: BLE001 - a fresh object whose save() fails
            return "other", f"{type(e).__name__}: {str(e)[:300]} [at save() before the call]"
    outcome, detail, result = _invoke(call)
    if outcome == "ok" and call.native and _nonfinite(call, result):
        outcome = "ok_nonfinite"
    if call.probe is not None and outcome != "other":
        problem = _check_object(call, outcome, detail, before)
        if problem:
            return "use_after", problem
    return outcome, detail


COLUMNS = ("inputs", "seed_calls", "TypeError", "ValueError", "ok", "other", "use_after", "crash", "hang",
           "seed_failed", "ok_nonfinite", "busy")


def _signature(kind: str, target: str, detail: str) -> str:
    """What groups failures: for exceptions the type and where it was raised (not the message,
    which names the wrong value), for crashes the signal and the first line of stderr."""
    detail = detail or ""
    if kind == "other":
        m = re.match(r"(\w+(?: \(core invariant\))?): .*(\[at [^\]]*\])\s*$", detail, re.S)
        detail = f"{m.group(1)} {m.group(2)}" if m else detail
    return f"{kind} | {target} | {re.sub(r'[0-9]+', '#', detail)[:160]}"


# --------------------------------------------------------------------------------------------
# The child: runs inputs [start, end), counting outcomes in shared memory (so nothing is lost
# when it dies) and sending each failure record to the parent as it happens.

_COL = {k: i for i, k in enumerate(COLUMNS)}
_ROW = {n: i * len(COLUMNS) for i, n in enumerate(_NAMES)}


def _count(counters, target: str, *cols: str) -> None:
    row = _ROW[target]
    for col in cols:
        counters[row + _COL[col]] += 1


def _child(c: Corpus, seed: int, start: int, end: int, current, counters, conn, mem_limit: int,
           stderr_path: str) -> None:
    try:
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    except OSError:
        pass
    # A fatal signal's Python traceback goes to the captured stderr too (pytest, for one,
    # points faulthandler at its own copy of the terminal).
    faulthandler.enable(file=2)
    if mem_limit:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
        except (ValueError, OSError):
            pass
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    nonfinite_sent: dict[str, int] = {}
    for i in range(start, end):
        current.value = i
        try:
            call = make_case(c, seed, i)
        except Exception as e:  # noqa: BLE001 - a builder's library calls failed on a valid input
            name = _target_of(seed, i)
            _count(counters, name, "inputs", "other")
            tb = traceback.extract_tb(e.__traceback__)
            conn.send(dict(index=i, kind="other", target=name, mutation="(building the seed call)",
                           detail=f"{type(e).__name__}: {str(e)[:300]} [at {Path(tb[-1].filename).name}:"
                                  f"{tb[-1].lineno} in {tb[-1].name}]"))
            continue
        outcome, detail = run_case(call)
        t = call.target
        cols = ["inputs"] + (["seed_calls"] if call.valid else [])
        if call.valid and outcome not in ("ok", "ok_nonfinite"):
            cols.append("seed_failed")
            conn.send(dict(index=i, kind="seed_failed", target=t, mutation=call.describe(),
                           detail=f"{outcome}: {detail}"))
        elif outcome == "ok_nonfinite":
            cols += ["ok", "ok_nonfinite"]
            nonfinite_sent[t] = nonfinite_sent.get(t, 0) + 1
            if nonfinite_sent[t] <= 3:
                conn.send(dict(index=i, kind="ok_nonfinite", target=t, mutation=call.describe(),
                               detail="returned or wrote NaN/inf"))
        else:
            cols.append(outcome)
            if outcome in ("other", "use_after"):
                conn.send(dict(index=i, kind=outcome, target=t, mutation=call.describe(), detail=detail))
        _count(counters, t, *cols)
        if call.info.get("busy"):
            counters[_ROW[t] + _COL["busy"]] += call.info["busy"]
        del call
    current.value = end
    conn.send("done")
    conn.close()


# --------------------------------------------------------------------------------------------
# The parent.

KEEP_PER_SIGNATURE = 3


@dataclasses.dataclass
class Result:
    seed: int
    inputs: int
    elapsed_s: float
    stats: dict
    failures: dict          # signature -> {"count", "examples": first few records}
    notes: list             # a few ok_nonfinite records
    restarts: int

    @property
    def totals(self) -> dict:
        return {k: sum(s[k] for s in self.stats.values()) for k in COLUMNS}

    @property
    def failure_count(self) -> int:
        t = self.totals
        return t["other"] + t["use_after"] + t["crash"] + t["hang"] + t["seed_failed"]


def _mem_limit() -> int:
    try:
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        vm = 1 << 30
    return vm + (3 << 30)


def _stats_from(counters) -> dict:
    n = len(COLUMNS)
    return {name: {k: int(counters[i * n + j]) for j, k in enumerate(COLUMNS)} for i, name in enumerate(_NAMES)}


def fuzz(seed: int = 0, inputs: int = 1_000_000, *, hang_timeout: float = 20.0, progress_s: float | None = 10.0,
         corpus: Corpus | None = None, log=print, mem_limit: int | None = None) -> Result:
    """Runs inputs [0, inputs) of ``seed`` in child processes; see the module doc."""
    t0 = time.monotonic()
    c = corpus or Corpus(seed)
    ctx = multiprocessing.get_context("fork")
    counters = ctx.RawArray("q", len(_NAMES) * len(COLUMNS))
    failures: dict[str, dict] = {}
    notes: list = []
    start, restarts = 0, 0
    mem = _mem_limit() if mem_limit is None else mem_limit
    last_progress = time.monotonic()
    fd, stderr_path = tempfile.mkstemp(prefix="fuzz_native_stderr_")
    os.close(fd)

    def record(f: dict) -> None:
        if f["kind"] == "ok_nonfinite":
            if len(notes) < 100:
                notes.append(f)
            return
        e = failures.setdefault(_signature(f["kind"], f["target"], f["detail"]), dict(count=0, examples=[]))
        e["count"] += 1
        if len(e["examples"]) < KEEP_PER_SIGNATURE:
            e["examples"].append(f)

    def progress(now: float) -> None:
        st = _stats_from(counters)
        run = sum(s["inputs"] for s in st.values())
        tot = {k: sum(s[k] for s in st.values()) for k in ("crash", "hang", "other", "use_after", "seed_failed")}
        el = now - t0
        log(f"[{el:7.0f}s] {run:>9,}/{inputs:,} inputs  {run / max(el, 1e-9):6.0f}/s  crashes {tot['crash']}  "
            f"hangs {tot['hang']}  other {tot['other']}  use_after {tot['use_after']}  seed_failed {tot['seed_failed']}  "
            f"signatures {len(failures)}", flush=True)

    try:
        while start < inputs:
            current = ctx.RawValue("q", start)
            rx, tx = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(c, seed, start, inputs, current, counters, tx, mem, stderr_path),
                            daemon=True)
            p.start()
            tx.close()
            done, dead = False, None
            seen, seen_t = current.value, time.monotonic()
            while True:
                eof = False
                try:
                    while rx.poll(0.1):
                        msg = rx.recv()
                        if msg == "done":
                            done = True
                            break
                        record(msg)
                except (EOFError, OSError):
                    eof = True
                if done:
                    break
                now = time.monotonic()
                idx = current.value
                if idx != seen:
                    seen, seen_t = idx, now
                if eof or not p.is_alive():
                    p.join(2)
                    dead = "died"
                    break
                if now - seen_t > hang_timeout:
                    p.kill()
                    dead = "hang"
                    break
                if progress_s and now - last_progress >= progress_s:
                    last_progress = now
                    progress(now)
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
            rx.close()
            if done:
                break
            idx = current.value
            kind = "hang" if dead == "hang" else "crash"
            code = p.exitcode
            why = (f"no progress for {hang_timeout:g} s" if kind == "hang"
                   else f"signal {-code} ({_signame(-code)})" if code is not None and code < 0 else f"exit code {code}")
            tail = ""
            try:
                with open(stderr_path, errors="replace") as f:
                    lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
                tail = next((ln for ln in lines if "rror" in ln or "atal" in ln), lines[0] if lines else "")
            except OSError:
                pass
            try:
                call = make_case(c, seed, idx)
                target, mutation, valid = call.target, call.describe(), call.valid
            except Exception as e:  # noqa: BLE001
                target, mutation, valid = _target_of(seed, idx), f"(could not rebuild: {e!r})", False
            _count(counters, target, "inputs", kind, *(("seed_calls", "seed_failed") if valid else ()))
            record(dict(index=idx, kind=kind, target=target, mutation=mutation,
                        detail=f"{why}: {tail[:300]}" if tail else why))
            start = idx + 1
            restarts += 1
    finally:
        try:
            os.unlink(stderr_path)
        except OSError:
            pass
    if progress_s:
        progress(time.monotonic())
    return Result(seed, inputs, time.monotonic() - t0, _stats_from(counters), failures, notes, restarts)


def _signame(n: int) -> str:
    import signal
    try:
        return signal.Signals(n).name
    except ValueError:
        return "?"


# --------------------------------------------------------------------------------------------
# Reporting.

def table(res: Result) -> str:
    cols = ("inputs", "TypeError", "ValueError", "ok", "other", "use_after", "crash", "hang", "seed_calls",
            "seed_failed", "ok_nonfinite", "busy")
    heads = ("inputs", "TypeError", "ValueError", "ok", "other", "use_after", "crash", "hang", "seeds", "seed_fail",
             "ok_nan", "busy")
    w = max(len(n) for n in res.stats) + 1
    lines = [f"{'function'.ljust(w)}" + "".join(h.rjust(11) for h in heads)]
    lines.append("-" * len(lines[0]))
    for n, s in res.stats.items():
        lines.append(n.ljust(w) + "".join(f"{s[k]:>11,}" for k in cols))
    lines.append("-" * len(lines[0]))
    t = res.totals
    lines.append("total".ljust(w) + "".join(f"{t[k]:>11,}" for k in cols))
    return "\n".join(lines)


def to_json(res: Result, command: str) -> dict:
    t = res.totals
    return {
        "benchmark": "fuzz_native", "command": command, "seed": res.seed, "inputs": res.inputs,
        "inputs_run": t["inputs"], "elapsed_s": round(res.elapsed_s, 1),
        "inputs_per_s": round(t["inputs"] / max(res.elapsed_s, 1e-9), 1), "restarts": res.restarts,
        "python": sys.version.split()[0], "numpy": np.__version__, "failures": res.failure_count,
        "totals": t, "per_function": res.stats,
        "failure_signatures": [dict(signature=k, **v) for k, v in
                               sorted(res.failures.items(), key=lambda kv: -kv[1]["count"])],
        "nonfinite_examples": res.notes,
    }


def replay(seed: int, index: int) -> None:
    """Builds input ``index`` of ``seed`` and runs it here (a crash takes this process down)."""
    c = Corpus(seed)
    call = make_case(c, seed, index)
    print(f"input {index} (seed {seed}): {call.target}: {call.describe()}", flush=True)
    if call.probe is not None:
        state = call.probe.state()
        print(f"  on a {type(call.probe.obj).__module__}.{type(call.probe.obj).__name__} "
              f"({len(state) if isinstance(state, bytes) else '?'} state bytes); follow-up: {call.probe.follow[0]}()")
    for i, a in enumerate(call.args):
        print(f"  arg {i} {call.names[i] if i < len(call.names) else ''}: {_short(a)}")
    for k, a in call.kwargs.items():
        print(f"  {k}= {_short(a)}")
    sys.stdout.flush()
    warnings.simplefilter("ignore")
    print("outcome:", *run_case(call), flush=True)


def _short(a) -> str:
    if isinstance(a, np.ndarray):
        flags = "" if a.flags.c_contiguous else " non-contiguous"
        flags += "" if a.flags.writeable else " read-only"
        body = np.array2string(a.reshape(-1)[:8], threshold=8) if a.size else "[]"
        return f"ndarray {a.dtype} shape {a.shape}{flags} {body}"
    s = repr(a)
    return s if len(s) < 160 else s[:157] + "..."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=None, help="inputs to run (default 1_000_000; --smoke: 3000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="a quick run (3000 inputs) written to fuzz_native_smoke.json")
    ap.add_argument("--hang-timeout", type=float, default=20.0, help="seconds without progress that count as a hang")
    ap.add_argument("--json", default=None, help="where to write the results (default benchmarks/results/...)")
    ap.add_argument("--replay", type=int, default=None, metavar="INDEX", help="run one input in this process")
    args = ap.parse_args(argv)
    if args.replay is not None:
        replay(args.seed, args.replay)
        return 0
    n = args.inputs if args.inputs is not None else (3000 if args.smoke else 1_000_000)
    path = Path(args.json) if args.json else RESULTS / ("fuzz_native_smoke.json" if args.smoke else "fuzz_native.json")
    command = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    print(f"fuzz_native: seed {args.seed}, {n:,} inputs, {len(TARGETS)} functions", flush=True)
    missing = native_surface() - {t.split(".", 1)[1] for t in TARGETS if t.startswith("native.")}
    if missing:
        print(f"warning: no builder for native {sorted(missing)}", flush=True)
    res = fuzz(args.seed, n, hang_timeout=args.hang_timeout)
    print(table(res))
    t = res.totals
    print(f"\n{t['inputs']:,} inputs in {res.elapsed_s:.1f} s ({t['inputs'] / max(res.elapsed_s, 1e-9):.0f}/s), "
          f"{res.restarts} restarts; failures: {res.failure_count} (other {t['other']}, use_after {t['use_after']}, "
          f"crashes {t['crash']}, "
          f"hangs {t['hang']}, seed calls failed {t['seed_failed']})")
    if res.failures:
        print("\nfailure signatures (count, first input; replay one with --seed S --replay INDEX):")
        for sig, v in sorted(res.failures.items(), key=lambda kv: -kv[1]["count"]):
            f = v["examples"][0]
            print(f"  {v['count']:>7,}  {sig}\n           first: input {f['index']}: {f['mutation'][:300]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(res, command), indent=1, default=repr))
    print(f"\nwrote {path}")
    return 1 if res.failure_count else 0


if __name__ == "__main__":
    sys.exit(main())
