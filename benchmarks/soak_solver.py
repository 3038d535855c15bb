"""Soak test of `uvc.Solver`: many randomised problems, each run for 30+ epochs of steps.

Every call the soak makes is valid, so any exception, any non-finite output or any factor
outside [0, 1] is a failure; so is a restored state that does not continue a run bit for bit.
Problems mix spec shapes, budgets 0.05–0.95, every axis on and off, tokens, both gate
granularities and the three samplers, warm-up and gating intervals, and score regimes:

* ``shrink``: scores multiplied by the squared proximal factors every step, exactly as the
  weights they are norms of (pruned groups decay to 0 through the denormals);
* ``zeros``: some groups exactly 0 from the start; ``ties``: a few distinct values only;
* ``equal``: every score of a kind the same; ``scales``: layers 10^±150 apart;
* ``denormal``: scores around 1e-310; ``jumps``: scores redrawn now and then.

    python benchmarks/soak_solver.py                 # >= 1 000 000 steps, table + JSON
    python benchmarks/soak_solver.py --steps 20000   # a shorter run

Writes ``benchmarks/results/soak_solver.json``; finished cases are cached in
``benchmarks/results/soak_solver.cache.jsonl`` so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import uvc

REGIMES = ("shrink", "zeros", "ties", "equal", "scales", "denormal", "jumps")
RESULTS = Path(__file__).resolve().parent / "results"


def random_spec(rng: np.random.Generator) -> uvc.ViTSpec:
    if rng.random() < 0.15:
        return uvc.ViTSpec.from_name("deit_tiny_patch16_224")
    heads = int(rng.integers(1, 7))
    head_dim = int(rng.choice([4, 8, 16, 32]))
    patch, side = 4, int(rng.choice([8, 12, 16, 28]))
    return uvc.ViTSpec(depth=int(rng.integers(1, 9)), embed_dim=heads * head_dim, num_heads=heads,
                       mlp_hidden=int(rng.choice([8, 16, 64, 128, 384])), patch_size=patch,
                       image_size=side, num_classes=10)


def random_options(rng: np.random.Generator, spec: uvc.ViTSpec) -> dict:
    axes = rng.random(3) < 0.75
    tokens = bool(rng.random() < 0.3 and spec.depth >= 2 and spec.num_patches >= 3)
    return dict(
        prune_heads=bool(axes[0]), prune_dims=bool(axes[1]), prune_neurons=bool(axes[2]),
        skip_blocks=bool(rng.random() < 0.7), prune_tokens=tokens,
        gate_granularity=str(rng.choice(["block", "part"])),
        gate_sampler=str(rng.choice(["gumbel", "sigmoid", "softl0"])),
        warmup_epochs=float(rng.choice([0.0, 0.5, 2.0, 5.0])),
        gating_interval=int(rng.choice([1, 5, 50])), gating_weight=float(rng.choice([5e-4, 1.0])),
        lr_counts=float(rng.choice([0.005, 0.02, 0.2])), eps_decay=float(rng.choice([0.92, 0.5])),
        tau_decay=float(rng.choice([1.0, 0.9])),
    )


class Scores:
    """Column scores (depth, heads, v_head_dim) and neuron scores under one regime."""

    def __init__(self, spec: uvc.ViTSpec, regime: str, rng: np.random.Generator) -> None:
        self.spec, self.regime, self.rng = spec, regime, rng
        self.cols, self.neurons = self._draw()

    def _draw(self) -> tuple[np.ndarray, np.ndarray]:
        s, rng = self.spec, self.rng
        shape_c, shape_n = (s.depth, s.num_heads, s.v_head_dim), (s.depth, s.mlp_hidden)
        if self.regime == "ties":
            return (rng.integers(0, 3, shape_c).astype(float), rng.integers(0, 3, shape_n).astype(float))
        if self.regime == "equal":
            return np.full(shape_c, 0.5), np.full(shape_n, 2.0)
        cols, neurons = rng.random(shape_c) + 0.05, rng.random(shape_n) + 0.05
        if self.regime == "zeros":
            cols[rng.random(shape_c) < 0.3] = 0
            neurons[rng.random(shape_n) < 0.3] = 0
        elif self.regime == "scales":
            cols *= 10.0 ** rng.uniform(-150, 150, (s.depth, 1, 1))
            neurons *= 10.0 ** rng.uniform(-150, 150, (s.depth, 1))
        elif self.regime == "denormal":
            cols *= 1e-310
            neurons *= 1e-310
        return cols, neurons

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.cols.sum(axis=2), self.cols, self.neurons

    def advance(self, result) -> None:
        """Weights shrink by their factors (every regime: that is what a real run does), and the
        training moves them a little; `jumps` redraws them now and then."""
        self.cols = self.cols * (result.head_factor[:, :, None] * result.dim_factor) ** 2
        self.neurons = self.neurons * result.neuron_factor ** 2
        if self.regime not in ("ties", "equal", "shrink"):
            self.cols *= np.exp(self.rng.normal(0, 0.01, self.cols.shape))
            self.neurons *= np.exp(self.rng.normal(0, 0.01, self.neurons.shape))
        if self.regime == "jumps" and self.rng.random() < 0.01:
            self.cols, self.neurons = self._draw()


def _check_result(result, where: str) -> None:
    for name in ("head_factor", "dim_factor", "neuron_factor"):
        f = getattr(result, name)
        # 0 only where a kind's scores sit in the denormals (an infinite raw dual).
        if not (np.all(f >= 0) and np.all(f <= 1)):
            raise AssertionError(f"{where}: {name} outside [0, 1]: {f[~((f >= 0) & (f <= 1))][:4]}")


def run_case(seed: int, *, epochs: float = 31.0, steps_per_epoch: int = 50) -> dict:
    """One randomised problem run for ``epochs`` epochs; returns its record (``failure`` is None
    when every call behaved)."""
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    regime = REGIMES[seed % len(REGIMES)]
    options = random_options(rng, spec)
    budget = float(rng.uniform(0.05, 0.95))
    try:
        solver = uvc.Solver(spec, budget, seed=seed, **options)
    except ValueError as e:  # an unreachable budget for these options: a valid refusal
        return dict(seed=seed, regime=regime, steps=0, skipped=str(e), failure=None)
    scores = Scores(spec, regime, rng)
    total = int(epochs * steps_per_epoch)
    restore_at = set(rng.integers(1, total, 3).tolist())
    twin, twin_steps = None, 0
    step = 0
    try:
        for step in range(total):
            epoch = step / steps_per_epoch
            lr = 5e-4 * 0.5 * (1 + np.cos(np.pi * step / total))
            gates = solver.sample_gates(epoch)
            if not np.all(np.isfinite(gates)):
                raise AssertionError(f"sample_gates returned {gates}")
            grad = rng.normal(0, 1e-2, (spec.depth, 2))
            tokens = None
            if options["prune_tokens"]:
                tokens = rng.dirichlet(np.ones(spec.num_tokens), spec.depth)
            heads, dims, neurons = scores.arrays()
            args = (heads, dims, neurons, grad)
            kw = dict(lr=lr, epoch=epoch, token_scores=tokens)
            if twin is not None:
                twin.sample_gates(epoch)
                r2 = twin.step(*args, **kw)
            result = solver.step(*args, **kw)
            _check_result(result, f"step {step}")
            if twin is not None:
                twin_steps += 1
                if not all(np.array_equal(getattr(result, n), getattr(r2, n))
                           for n in ("head_factor", "dim_factor", "neuron_factor")):
                    raise AssertionError(f"step {step}: a restored solver diverged {twin_steps} steps after restoring")
                if twin_steps == 20:
                    if twin.state_dict() != solver.state_dict():
                        raise AssertionError(f"step {step}: restored state differs after 20 steps")
                    twin = None
            scores.advance(result)
            if step in restore_at and twin is None:
                twin, twin_steps = uvc.Solver.from_state_dict(json.loads(json.dumps(solver.state_dict()))), 0
            if step % 200 == 0:
                solver.masks()
                solver.stats()
        plan = solver.plan()
        ratio = uvc.count(spec, plan, solver.convention).macs / solver.dense_macs
    except Exception as e:  # noqa: BLE001 - every exception of a valid call is a finding
        return dict(seed=seed, regime=regime, steps=step + 1, spec=spec.to_dict(), options=options,
                    budget=budget, failure=f"{type(e).__name__}: {e}")
    return dict(seed=seed, regime=regime, steps=total, budget=budget, plan_ratio=ratio, failure=None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1_000_000, help="total solver steps to run (default 1e6)")
    ap.add_argument("--seed", type=int, default=0, help="first case seed")
    ap.add_argument("--fresh", action="store_true", help="ignore cached cases")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = RESULTS / "soak_solver.cache.jsonl"
    done = {}
    if cache.exists() and not args.fresh:
        for line in cache.read_text().splitlines():
            rec = json.loads(line)
            done[rec["seed"]] = rec
    records, seed, steps, t0, last = [], args.seed, 0, time.time(), 0.0
    with cache.open("a") as f:
        while steps < args.steps:
            rec = done.get(seed)
            if rec is None:
                rec = run_case(seed)
                f.write(json.dumps(rec) + "\n")
                f.flush()
            records.append(rec)
            steps += rec["steps"]
            seed += 1
            if time.time() - last > 10:
                last = time.time()
                fails = sum(r["failure"] is not None for r in records)
                print(f"  {steps:>9} steps, {len(records)} cases, {fails} failures, {last - t0:.0f} s", flush=True)
    rows = []
    for regime in REGIMES:
        rs = [r for r in records if r["regime"] == regime]
        ran = [r for r in rs if r["steps"] > 0]
        over = [r["plan_ratio"] / r["budget"] - 1 for r in ran if "plan_ratio" in r]
        rows.append(dict(regime=regime, cases=len(rs), steps=sum(r["steps"] for r in rs),
                         refused_budgets=sum("skipped" in r for r in rs),
                         failures=sum(r["failure"] is not None for r in rs),
                         over_budget=sum(o > 0.01 for o in over),
                         median_plan_over_budget=float(np.median(over)) if over else None))
    print(f"\n{'regime':<10} {'cases':>6} {'steps':>9} {'refused':>8} {'failures':>9} {'plan > 1.01 budget':>19}"
          f" {'median plan/budget - 1':>23}")
    for r in rows:
        med = "-" if r["median_plan_over_budget"] is None else f"{r['median_plan_over_budget']:+.4f}"
        print(f"{r['regime']:<10} {r['cases']:>6} {r['steps']:>9} {r['refused_budgets']:>8} {r['failures']:>9}"
              f" {r['over_budget']:>19} {med:>23}")
    failures = [r for r in records if r["failure"] is not None]
    total = dict(steps=steps, cases=len(records), failures=len(failures), seconds=time.time() - t0)
    print(f"\ntotal: {steps} steps in {len(records)} cases, {len(failures)} failures")
    for r in failures[:10]:
        print(f"  seed {r['seed']} ({r['regime']}) at step {r['steps']}: {r['failure']}")
    (RESULTS / "soak_solver.json").write_text(json.dumps(dict(total=total, regimes=rows, failures=failures), indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
