"""uvc.Solver: convergence on a synthetic problem, formulas against plain-Python references,
the gate sampler's statistics, exact resume, and argument checking."""
import base64
import json
import math

from dataclasses import replace

import numpy as np
import pytest

import uvc

TINY, SMALL = "deit_tiny_patch16_224", "deit_small_patch16_224"


def class_attention(spec, keep, concentration):
    """Token scores as `Compressor` passes them: row l the class attention over the keep[l] tokens
    entering block l, 0.1 on the prefix, the rest sorted high to low ∝ rank^-concentration[l]."""
    out = np.zeros((spec.depth, spec.num_tokens))
    p = spec.prefix_tokens
    for l, n in enumerate(keep):
        profile = np.arange(1.0, n - p + 1) ** -concentration[l]
        out[l, :p] = 0.1 / p
        out[l, p:n] = 0.9 * profile / profile.sum()
    return out


def synthetic_run(name, budget, steps=1500, steps_per_epoch=100, seed=0, concentration=None, **hyper):
    """The solver on fixed random group scores (no network): each column's norm is pulled back
    to its trained value by a quadratic task loss and shrunk by the solver's factors; the gate
    loss ½·a·(g − 2)² wants every part on, more so in later layers. With ``concentration``
    (per layer) the solver also gets `class_attention` token scores of its own schedule.
    Returns the solver, the (expected ratio, plan ratio, z) of the last fifth of the run and
    the trained norms."""
    spec = uvc.ViTSpec.from_name(name)
    L, H, dv, M = spec.depth, spec.num_heads, spec.v_head_dim, spec.mlp_hidden
    rng = np.random.default_rng(seed)
    layer = np.exp(rng.normal(0, 0.3, L))
    w0d = np.exp(rng.normal(0, 0.5, (L, H, dv))) * np.exp(rng.normal(0, 0.3, (L, H, 1))) * layer[:, None, None]
    w0n = np.exp(rng.normal(0, 0.5, (L, M))) * layer[:, None]
    wd, wn = w0d.copy(), w0n.copy()
    a = np.linspace(0.2, 1.0, L)[:, None] * np.ones((1, 2))
    solver = uvc.Solver(spec, budget, seed=seed, **dict(dict(warmup_epochs=1.0), **hyper))
    tail = []
    for t in range(steps):
        epoch = t / steps_per_epoch
        g = solver.sample_gates(epoch)
        wd += 0.02 * (w0d - wd)
        wn += 0.02 * (w0n - wn)
        sd, sn = wd ** 2, wn ** 2
        tokens = None if concentration is None else class_attention(spec, solver.token_keep(), concentration)
        res = solver.step(sd.sum(-1), sd, sn, a * (g - 2.0), lr=1e-2, epoch=epoch, token_scores=tokens)
        wd *= res.head_factor[:, :, None] * res.dim_factor
        wn *= res.neuron_factor
        if t >= steps - steps // 5 and t % 10 == 0:
            st = solver.stats()
            tail.append((st["expected_ratio"], st["plan_ratio"], st["z"]))
    return solver, np.array(tail), (w0d, w0n, layer)


@pytest.mark.parametrize("name", [TINY, SMALL])
@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
def test_search_meets_the_budget_with_a_settled_z_removing_the_lowest_groups(name, budget):
    solver, tail, (w0d, w0n, _) = synthetic_run(name, budget)
    st = solver.stats()
    plan = solver.plan()
    macs = uvc.count(solver.spec, plan).macs
    assert macs == pytest.approx(st["plan_macs"], rel=1e-12)
    assert macs == pytest.approx(solver.budget_macs, rel=0.01)
    # The expected cost counts gate probabilities still short of 1 (the gates started at 0.88).
    assert st["expected_ratio"] == pytest.approx(budget, rel=0.03)
    z = tail[:, 2]
    assert 0 < z.min() and z.max() < 1e3
    assert z.max() / z.min() < 1.05, "z settles: no swing to 0, no growth"
    assert np.abs(tail[:, 1] / budget - 1).max() < 0.02
    # The kept groups are the highest-scoring ones (scores: the trained column norms squared).
    for l, layer in enumerate(plan.layers):
        assert layer.attn and layer.mlp
        heads = np.argsort(-(w0d[l] ** 2).sum(-1), kind="stable")[:len(layer.heads)]
        assert set(layer.heads) == set(heads.tolist())
        neurons = np.argsort(-w0n[l], kind="stable")[:len(layer.neurons)]
        assert set(layer.neurons) == set(neurons.tolist())
        for h, v in zip(layer.heads, layer.v_index):
            assert set(v) == set(np.argsort(-w0d[l, h], kind="stable")[:len(v)].tolist())


def test_layers_with_lower_scores_lose_more():
    solver, _, (_, _, layer) = synthetic_run(SMALL, 0.5)
    kept = np.array(solver.stats()["kept_neurons"])
    # Rank correlation between a layer's score scale and the neurons it keeps.
    r = np.corrcoef(np.argsort(np.argsort(layer)), np.argsort(np.argsort(kept)))[0, 1]
    assert r > 0.8


def _drive(solver, scores, steps, start=0, spe=10):
    out = []
    for t in range(start, start + steps):
        epoch = t / spe
        g = solver.sample_gates(epoch)
        res = solver.step(*scores, 0.5 - g, lr=1e-2, epoch=epoch)
        out.append((g, res.head_factor.copy(), res.dim_factor.copy(), res.neuron_factor.copy()))
    return out


def _fields(solver):
    """The solver state by field name, as lists."""
    return {k: v.tolist() for k, v in solver.state_fields().items()}


def _edit_state(d, **changes):
    """A copy of state dict ``d`` with state fields replaced. Test-only: it writes the core's
    archive layout (a 16-byte header, a length word, then the float64 fields in order)."""
    fields = uvc.Solver.from_state_dict(d).state_fields()
    raw = bytearray(base64.b64decode(d["state"]))
    at = 24
    for name, values in fields.items():
        if name in changes:
            new = np.asarray(changes[name], dtype="<f8").reshape(-1)
            assert new.size == values.size, name
            raw[at:at + 8 * new.size] = new.tobytes()
        at += 8 * values.size
    return dict(d, state=base64.b64encode(bytes(raw)).decode("ascii"))


def _scores(spec, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.random((spec.depth, spec.num_heads, spec.v_head_dim)) + 0.1
    return d.sum(-1), d, rng.random((spec.depth, spec.mlp_hidden)) + 0.1


HYPER = dict(warmup_epochs=0.5, lr_counts=(0.05, 0.05, 0.1), gating_interval=3, gate_granularity="part",
             zlr_schedule=(1, 2))


def test_resume_from_json_continues_bit_identically():
    spec = uvc.ViTSpec.from_name(TINY)
    scores = _scores(spec)
    whole = uvc.Solver(spec, 0.4, seed=3, **HYPER)
    a = _drive(whole, scores, 60)
    first = uvc.Solver(spec, 0.4, seed=3, **HYPER)
    _drive(first, scores, 25)
    d = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    resumed = uvc.Solver.from_state_dict(d)
    b = _drive(resumed, scores, 35, start=25)
    for x, y in zip(a[25:], b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert resumed.state_dict() == whole.state_dict()
    assert whole.stats()["z"] > 0 and whole.stats()["search_steps"] == 55
    other = uvc.Solver(spec, 0.4, seed=3, **HYPER)
    other.load_state_dict(first.state_dict())
    _drive(other, scores, 35, start=25)
    assert other.state_dict() == whole.state_dict()


def test_identical_inputs_give_identical_solvers():
    spec = uvc.ViTSpec.from_name(TINY)
    scores = _scores(spec, 1)
    a, b = uvc.Solver(spec, 0.5, seed=7, **HYPER), uvc.Solver(spec, 0.5, seed=7, **HYPER)
    _drive(a, scores, 40)
    _drive(b, scores, 40)
    assert a.state_dict() == b.state_dict()
    c = uvc.Solver(spec, 0.5, seed=8, **HYPER)
    _drive(c, scores, 40)
    assert c.state_dict()["state"] != a.state_dict()["state"]


def test_load_refuses_another_spec_and_corrupt_states_without_changing_anything():
    spec = uvc.ViTSpec.from_name(TINY)
    solver = uvc.Solver(spec, 0.5, **HYPER)
    _drive(solver, _scores(spec), 12)
    before = solver.state_dict()
    other = uvc.Solver(uvc.ViTSpec.from_name(SMALL), 0.5)
    with pytest.raises(ValueError, match="different spec"):
        solver.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="state.z"):
        solver.load_state_dict(_edit_state(before, z=[-1.0]))
    with pytest.raises(ValueError, match="state.removal"):
        solver.load_state_dict(_edit_state(before, removal=[np.nan] * (3 * spec.depth)))
    raw = base64.b64decode(before["state"])
    for bad, needle in ((raw[:-8], "truncated"), (raw + bytes(8), "past its end"), (raw[:8] + bytes([2]) + raw[9:],
                        "group sampler"), (raw[:12] + bytes([9]) + raw[13:], "format version 9"), (b"x" * 40, "not a uvc")):
        with pytest.raises(ValueError, match=needle):
            solver.load_state_dict(dict(before, state=base64.b64encode(bad).decode("ascii")))
    with pytest.raises(ValueError, match="uvc 0.1"):
        solver.load_state_dict(dict(before, format="uvc.solver/2"))
    assert solver.state_dict() == before


def test_warmup_keeps_everything_on_and_the_state_still():
    spec = uvc.ViTSpec.from_name(TINY)
    solver = uvc.Solver(spec, 0.5, warmup_epochs=2.0)
    before = _fields(solver)
    for epoch in (0.0, 1.0, 1.99):
        np.testing.assert_array_equal(solver.sample_gates(epoch), np.ones((spec.depth, 2)))
        res = solver.step(*_scores(spec), np.ones((spec.depth, 2)), lr=0.1, epoch=epoch)
        for f in (res.head_factor, res.dim_factor, res.neuron_factor):
            np.testing.assert_array_equal(f, 1.0)
    after = _fields(solver)
    assert after["epoch"] == [1.99]
    assert {k: v for k, v in after.items() if k != "epoch"} == {k: v for k, v in before.items() if k != "epoch"}
    for m in solver.masks():
        np.testing.assert_array_equal(m, 1.0)


# Plain-Python xoshiro256** seeded by SplitMix64, and the two random gate relaxations.
_M = (1 << 64) - 1


def _rng_words(seed):
    s, words = seed, []
    for _ in range(4):
        s = (s + 0x9E3779B97F4A7C15) & _M
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & _M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M
        words.append(z ^ (z >> 31))
    return words


def _uniforms(seed):
    s = _rng_words(seed)
    rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & _M  # noqa: E731
    while True:
        r = (rotl((s[1] * 5) & _M, 7) * 9) & _M
        t = (s[1] << 17) & _M
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45)  # noqa: E702
        yield ((r >> 11) + 0.5) * 2.0 ** -53


@pytest.mark.parametrize("sampler", ["gumbel", "sigmoid"])
def test_soft_gate_samples_match_a_plain_python_reference(sampler):
    spec = uvc.ViTSpec.from_name(TINY)
    tau = 0.7
    solver = uvc.Solver(spec, 0.5, seed=123, warmup_epochs=0.0, gate_sampler=sampler, straight_through=False,
                        tau=tau, gate_granularity="part")
    u = _uniforms(123)
    d = 2.0  # gate_init: log-odds of running
    for _ in range(3):
        gates = solver.sample_gates(0.5)
        for l in range(spec.depth):
            for part in range(2):
                if sampler == "gumbel":
                    g_skip, g_run = -math.log(-math.log(next(u))), -math.log(-math.log(next(u)))
                    expected = 1 / (1 + math.exp(-(d + g_run - g_skip) / tau))
                else:
                    x = next(u)
                    expected = 1 / (1 + math.exp(-(d + math.log(x) - math.log1p(-x)) / tau))
                assert gates[l, part] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("sampler", ["gumbel", "sigmoid"])
def test_hard_gates_run_as_often_as_the_softmax_probability(sampler):
    spec = uvc.ViTSpec.from_name(TINY)
    init = 0.7
    solver = uvc.Solver(spec, 0.5, seed=5, warmup_epochs=0.0, gate_sampler=sampler, gate_init=init)
    draws = np.stack([solver.sample_gates(1.0) for _ in range(2000)])
    assert set(np.unique(draws)) <= {0.0, 1.0}
    np.testing.assert_array_equal(draws[:, :, 0], draws[:, :, 1])  # one gate per block
    p = 1 / (1 + math.exp(-init))
    n = draws[:, :, 0].size
    assert draws[:, :, 0].mean() == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    probs = np.array(solver.stats()["gate_probs"])
    np.testing.assert_allclose(probs, p, rtol=1e-12)
    again = uvc.Solver(spec, 0.5, seed=5, warmup_epochs=0.0, gate_sampler=sampler, gate_init=init)
    np.testing.assert_array_equal(np.stack([again.sample_gates(1.0) for _ in range(2000)]), draws)


def test_proximal_factors_shrink_the_groups_leastsum_covers():
    spec = uvc.ViTSpec.from_name(TINY)
    solver = uvc.Solver(spec, 0.5, warmup_epochs=0.0, lr_counts=(0.3, 0.3, 0.3), dual_lr=0.5)
    scores = _scores(spec, 4)
    _drive(solver, scores, 5)
    state = _fields(solver)
    removal, duals = np.array(state["removal"]).reshape(3, -1), np.array(state["duals"]).reshape(3, -1)
    eta = 0.02
    assert removal[2].max() > 1, "the test needs neurons under shrink"
    res = solver.step(*scores, None, lr=eta, epoch=1.0)
    for l in range(spec.depth):
        row = scores[2][l]
        s = removal[2, l]
        whole, frac = int(s), s - int(s)
        # The dual in raw score units: over a layer's worth of the kind's mean score.
        raw = duals[2, l] / (scores[2].mean() * row.size)
        expected = np.ones_like(row)
        order = np.argsort(row, kind="stable")
        expected[order[:whole]] = 1 / (1 + 2 * eta * raw)
        expected[order[whole]] = 1 / (1 + 2 * eta * raw * frac)
        np.testing.assert_allclose(res.neuron_factor[l], expected, rtol=1e-15)
        assert (res.neuron_factor[l] < 1).sum() == whole + (frac > 0)


def test_expected_macs_is_the_cost_model_on_counts_and_gate_probabilities():
    spec = uvc.ViTSpec.from_name(SMALL)
    solver = uvc.Solver(spec, 0.5, warmup_epochs=0.0, convention="fvcore", lr_counts=0.2)
    _drive(solver, _scores(spec, 2), 20)
    state = _fields(solver)
    removal = np.array(state["removal"]).reshape(3, -1)
    probs = np.array(solver.stats()["gate_probs"])
    x = uvc.relaxed_inputs(spec, heads=spec.num_heads - removal[0], v_dim=spec.v_head_dim - removal[1],
                           neurons=spec.mlp_hidden - removal[2], attn_gate=probs[:, 0], mlp_gate=probs[:, 1])
    assert solver.expected_macs() == pytest.approx(uvc.expected_cost(spec, x, convention="fvcore"), rel=1e-12)
    assert solver.dense_macs == uvc.count(spec, convention="fvcore").macs


def test_the_z_schedule_takes_effect():
    spec = uvc.ViTSpec.from_name(TINY)
    scores = _scores(spec)
    zs = []
    for schedule in ((), (0.0, 0.5)):
        solver = uvc.Solver(spec, 0.5, warmup_epochs=0.0, zlr_schedule=schedule, zlr_gamma=3.0, z_lr=0.1)
        solver.step(*scores, None, lr=1e-3, epoch=1.0)
        zs.append(solver.stats()["z"])
    # First step from z = 0 with the same violation: η_z is 3² times larger after two epochs listed.
    assert zs[0] > 0
    assert zs[1] == pytest.approx(9 * zs[0], rel=1e-12)


def test_gates_skip_the_blocks_the_task_does_not_need():
    spec = uvc.ViTSpec.from_name(TINY)
    # Skipping 3 of the 12 blocks leaves 75.6 % of the MACs (the patch embedding stays).
    solver = uvc.Solver(spec, 0.76, warmup_epochs=0.0, prune_heads=False, prune_dims=False, prune_neurons=False,
                        gating_weight=1.0, gating_interval=1, gate_lr=0.5)
    useless = np.zeros(spec.depth, bool)
    useless[[2, 5, 9]] = True
    need = np.where(useless, 0.0, 1.0)[:, None] * np.ones((1, 2))
    scores = _scores(spec)
    for t in range(600):
        g = solver.sample_gates(t / 100)
        solver.step(*scores, need * (g - 2.0), lr=1e-3, epoch=t / 100)
    on = solver.gate_decisions()
    np.testing.assert_array_equal(on[:, 0], ~useless)
    np.testing.assert_array_equal(on[:, 0], on[:, 1])
    plan = solver.plan()
    assert [not l.attn and not l.mlp for l in plan.layers] == useless.tolist()
    assert uvc.count(spec, plan).macs < solver.budget_macs


def test_plan_rounded_to_eight_meets_the_budget():
    solver, _, _ = synthetic_run(TINY, 0.5, steps=600)
    plan = solver.plan(round_to=8)
    macs = uvc.count(solver.spec, plan).macs
    assert 0.97 * solver.budget_macs < macs <= solver.budget_macs
    for layer, raw in zip(plan.layers, solver.plan().layers):
        assert layer.v_dim % 8 == 0 and len(layer.neurons) % 8 == 0
        assert layer.heads == raw.heads


@pytest.mark.parametrize("steps", [150, 600])
def test_fit_spends_the_budget_from_either_side(steps):
    """150 steps end before the search reaches the budget (the plan is over it), 600 after it
    (the integer plan sits below it): fit=True exports a plan within the budget that no single
    value dim or neuron more would fit in, with the same heads and parts."""
    solver, _, _ = synthetic_run(TINY, 0.5, steps=steps)
    spec, raw, fit = solver.spec, solver.plan(), solver.plan(fit=True)
    budget = solver.budget_macs
    raw_macs, macs = uvc.count(spec, raw).macs, uvc.count(spec, fit).macs
    assert (raw_macs > budget) == (steps == 150)
    assert macs <= budget < raw_macs or raw_macs <= macs <= budget
    for l, (f, r) in enumerate(zip(fit.layers, raw.layers)):
        assert f.heads == r.heads and (f.attn, f.mlp) == (r.attn, r.mlp)
        # Nothing more fits: one more neuron, or value dim in every kept head, is over the budget.
        wider = []
        if f.mlp and len(f.neurons) < spec.mlp_hidden:
            extra = min(set(range(spec.mlp_hidden)) - set(f.neurons))
            wider.append(replace(f, neurons=tuple(sorted(f.neurons + (extra,)))))
        if f.attn and f.heads and f.v_dim < spec.v_head_dim:
            wider.append(replace(f, v_index=tuple(tuple(sorted(v + (min(set(range(spec.v_head_dim)) - set(v)),)))
                                                  for v in f.v_index)))
        for layer in wider:
            plan = uvc.ArchPlan(spec, fit.layers[:l] + (layer,) + fit.layers[l + 1:])
            assert uvc.count(spec, plan).macs > budget, f"layer {l}: {layer} still fits"
    with pytest.raises(TypeError, match="fit"):
        solver.plan(fit=1)


@pytest.mark.parametrize("steps", [150, 600])
def test_fit_keeps_value_dims_the_search_does_not_prune(steps):
    """With prune_dims=False the fit trims and fills neurons only: every kept head keeps its
    whole value width, as the search trained it."""
    solver, _, _ = synthetic_run(TINY, 0.5, steps=steps, prune_dims=False)
    assert (uvc.count(solver.spec, solver.plan()).macs > solver.budget_macs) == (steps == 150), "trim, then fill"
    fit = solver.plan(fit=True)
    assert uvc.count(solver.spec, fit).macs <= solver.budget_macs
    assert {layer.v_dim for layer in fit.layers if layer.attn and layer.heads} == {solver.spec.v_head_dim}
    assert [len(f.neurons) for f in fit.layers] != [len(r.neurons) for r in solver.plan().layers]


def test_budget_in_macs_and_reachability():
    spec = uvc.ViTSpec.from_name(TINY)
    dense = uvc.count(spec).macs
    solver = uvc.Solver(spec, budget_macs=0.4 * dense)
    assert solver.budget_macs == pytest.approx(0.4 * dense)
    assert solver.hyper["budget"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="budget_macs"):
        uvc.Solver(spec, budget_macs=2 * dense)
    with pytest.raises(ValueError, match="smallest cost"):
        uvc.Solver(spec, 0.2, skip_blocks=False, prune_heads=False, prune_dims=False)


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(budget=0.0), ValueError, "budget"),
    (dict(budget=1.5), ValueError, "budget"),
    (dict(budget=float("nan")), ValueError, "budget"),
    (dict(lr_counts=-0.1), ValueError, "lr_counts"),
    (dict(lr_counts=(0.1, 0.1)), ValueError, "lr_counts"),
    (dict(gate_lr=-1.0), ValueError, "gate_lr"),
    (dict(z_lr=-1.0), ValueError, "z_lr"),
    (dict(dual_lr=-1e-4), ValueError, "dual_lr"),
    (dict(z_grad_clip=0.0), ValueError, "z_grad_clip"),
    (dict(tau=0.0), ValueError, "tau"),
    (dict(eps_decay=1.5), ValueError, "eps_decay"),
    (dict(hysteresis=0.5), ValueError, "hysteresis"),
    (dict(zlr_schedule=(1, -2)), ValueError, "zlr_schedule"),
    (dict(gating_interval=0), ValueError, "gating_interval"),
    (dict(gating_interval=2.5), TypeError, "gating_interval"),
    (dict(gate_granularity="layer"), ValueError, "gate_granularity"),
    (dict(gate_sampler="uniform"), ValueError, "gate_sampler"),
    (dict(prune_heads=1), TypeError, "prune_heads"),
    (dict(tau="hot"), TypeError, "tau"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(warmup=3), TypeError, "unknown"),
])
def test_bad_hyper_parameters_name_the_argument(kwargs, error, name):
    spec = uvc.ViTSpec.from_name(TINY)
    budget = kwargs.pop("budget", 0.5)
    with pytest.raises(error, match=name):
        uvc.Solver(spec, budget, **kwargs)


def test_one_count_step_in_a_sequence_applies_to_every_kind():
    # `--lr-counts 0.1` reaches the solver as a one-element tuple.
    spec = uvc.ViTSpec.from_name(TINY)
    assert uvc.Solver(spec, 0.5, lr_counts=(0.1,)).hyper["lr_counts"] == (0.1, 0.1, 0.1)
    assert uvc.Solver(spec, 0.5, lr_counts=[0.1, 0.2, 0.3]).hyper["lr_counts"] == (0.1, 0.2, 0.3)


def test_bad_arrays_name_the_argument():
    spec = uvc.ViTSpec.from_name(TINY)
    solver = uvc.Solver(spec, 0.5, warmup_epochs=0.0)
    h, d, n = _scores(spec)
    with pytest.raises(ValueError, match="neuron_scores"):
        solver.step(h, d, n[:, :-1], None, lr=1e-4, epoch=1.0)
    with pytest.raises(ValueError, match="head_scores"):
        solver.step(h.T.copy(), d, n, None, lr=1e-4, epoch=1.0)
    bad = d.copy()
    bad[3, 1, 7] = np.nan
    with pytest.raises(ValueError, match="dim_scores"):
        solver.step(h, bad, n, None, lr=1e-4, epoch=1.0)
    with pytest.raises(ValueError, match="neuron_scores"):
        solver.step(h, d, -n, None, lr=1e-4, epoch=1.0)
    with pytest.raises(TypeError, match="head_scores"):
        solver.step(h.astype(np.float32), d, n, None, lr=1e-4, epoch=1.0)
    with pytest.raises(TypeError, match="dim_scores"):
        solver.step(h, d.tolist(), n, None, lr=1e-4, epoch=1.0)
    with pytest.raises(ValueError, match="gate_grad"):
        solver.step(h, d, n, np.zeros((spec.depth, 3)), lr=1e-4, epoch=1.0)
    with pytest.raises(ValueError, match="lr"):
        solver.step(h, d, n, None, lr=-1.0, epoch=1.0)
    with pytest.raises(ValueError, match="epoch"):
        solver.step(h, d, n, None, lr=1e-4, epoch=float("inf"))
    with pytest.raises(ValueError, match="round_to"):
        solver.plan(round_to=0)
    with pytest.raises(TypeError, match="round_to"):
        solver.plan(round_to=8.0)
    assert solver.stats()["search_steps"] == 0, "refused steps change nothing"


def test_a_refused_step_keeps_the_last_scores():
    """The scores are copied while they are checked: a step refused at its last neuron must
    leave what masks, plan and state_dict read as it was."""
    spec = uvc.ViTSpec.from_name(TINY)
    solver = uvc.Solver(spec, 0.5, warmup_epochs=0.0)
    h, d, n = _scores(spec)
    for _ in range(30):
        solver.sample_gates(1.0)
        solver.step(h, d, n, None, lr=1e-4, epoch=1.0)
    before = solver.state_dict()
    masks = solver.masks()
    bad = (2 * h, 2 * d, 2 * n)
    bad[2][-1, -1] = np.nan
    with pytest.raises(ValueError, match="neuron_scores"):
        solver.step(*bad, None, lr=1e-4, epoch=1.0)
    assert solver.state_dict() == before
    for got, want in zip(solver.masks(), masks):
        np.testing.assert_array_equal(got, want)
    again = uvc.Solver.from_state_dict(before)
    for got, want in zip(again.masks(), masks):
        np.testing.assert_array_equal(got, want)


# Token pruning: a budgeted dimension of its own, traded against the groups.

def valid_schedule(spec, plan):
    """Checks the token schedule of ``plan`` against the rules the adapter relies on."""
    tokens = [l.tokens for l in plan.layers]
    assert tokens[0] == spec.num_tokens
    for l in range(spec.depth - 1):
        assert tokens[l + 1] <= tokens[l]
        if tokens[l + 1] < tokens[l]:
            assert plan.layers[l].attn and tokens[l + 1] >= spec.prefix_tokens + 2
    return tokens


def token_free(plan):
    """``plan`` with every block taking all tokens."""
    import dataclasses
    return uvc.ArchPlan(plan.spec, tuple(dataclasses.replace(l, tokens=plan.spec.num_tokens) for l in plan.layers))


def test_tokens_and_groups_share_one_budget():
    spec = uvc.ViTSpec.from_name(TINY)
    solver, tail, _ = synthetic_run(TINY, 0.5, concentration=np.linspace(0.3, 0.8, spec.depth), prune_tokens=True)
    plan = solver.plan()
    macs = uvc.count(spec, plan).macs
    assert macs == pytest.approx(solver.stats()["plan_macs"], rel=1e-12)
    assert macs == pytest.approx(solver.budget_macs, rel=0.01)
    assert np.abs(tail[:, 1] / 0.5 - 1).max() < 0.02
    tokens = valid_schedule(spec, plan)
    assert tokens == solver.token_keep().tolist() == solver.stats()["tokens"]
    # The mix: dropped tokens save most, removed groups (heads, dims, neurons) a part.
    dense = solver.dense_macs
    by_groups = dense - uvc.count(spec, token_free(plan)).macs
    assert 0.03 * dense < by_groups < 0.2 * dense
    assert dense - macs - by_groups > 0.2 * dense
    # Blocks with more concentrated class attention keep fewer of their tokens.
    drops = -np.diff(tokens)
    assert drops[-1] > 0 and tokens[-1] < tokens[1] / 2


def test_tokens_alone_reach_the_budget_where_attention_is_concentrated():
    spec = uvc.ViTSpec.from_name(TINY)
    concentration = np.linspace(0.2, 2.0, spec.depth)
    solver, tail, _ = synthetic_run(TINY, 0.5, concentration=concentration, prune_tokens=True, prune_heads=False,
                                    prune_dims=False, prune_neurons=False, skip_blocks=False)
    plan = solver.plan()
    assert uvc.count(spec, plan).macs == pytest.approx(solver.budget_macs, rel=0.01)
    assert np.abs(tail[:, 1] / 0.5 - 1).max() < 0.01
    assert token_free(plan) == uvc.ArchPlan.dense(spec)
    tokens = valid_schedule(spec, plan)
    # Flat attention early (each token as useful as the next) is kept; the later, peaked blocks drop.
    assert tokens[:3] == [spec.num_tokens] * 3 and tokens[-1] < 0.2 * spec.num_tokens


def test_one_token_step_against_a_plain_python_reference():
    spec = uvc.ViTSpec.from_name(TINY)
    L, N, P, p = spec.depth, spec.num_tokens, spec.num_patches, spec.prefix_tokens
    hyper = dict(warmup_epochs=0.0, prune_tokens=True, skip_blocks=False, lr_tokens=0.05, budget_damping=3.0)
    solver = uvc.Solver(spec, 0.5, **hyper)
    scores = _scores(spec)
    concentration = np.linspace(0.5, 1.5, L)
    for t in range(30):
        solver.step(*scores, None, lr=1e-3, epoch=1.0, token_scores=class_attention(spec, solver.token_keep(),
                                                                                      concentration))
    state = _fields(solver)
    r, y, z = np.array(state["token_removal"]), np.array(state["token_duals"]), state["z"][0]
    assert r.sum() > 10 and z > 0, "the cost gradient moved the token counts"
    keep = solver.token_keep()
    ts = class_attention(spec, keep, concentration)
    removal = np.array(state["removal"]).reshape(3, L)
    # LeastSum slopes over the tokens entering each block, in units of the mean entry, once per later block.
    rows = [ts[b, p:keep[b]] for b in range(L - 1)]
    unit = np.concatenate(rows).mean()
    slopes = np.array([(L - 1 - b) * np.sort(row)[int(min(r[b], len(row) - 1))] / unit
                       for b, row in enumerate(rows)])
    tokens = N - np.concatenate([[0.0], np.cumsum(r)])
    macs, grad = uvc.relaxed_cost(spec, heads=spec.num_heads - removal[0], v_dim=spec.v_head_dim - removal[1],
                                  neurons=spec.mlp_hidden - removal[2], tokens=tokens)
    saved = np.cumsum(grad["tokens"][::-1])[::-1][1:]  # Σ_{m > b} ∂MACs/∂tokens[m]
    assert (saved > 0).all()
    price = max(0.0, z + 3.0 * (macs / solver.dense_macs - 0.5))
    g = y * slopes - price * P * saved / solver.dense_macs
    expected = np.maximum(r - 0.05 * P / max(1.0, np.abs(g).max()) * g, 0)
    assert expected.sum() <= P - 2
    solver.step(*scores, None, lr=1e-3, epoch=1.0, token_scores=ts)
    np.testing.assert_allclose(_fields(solver)["token_removal"], expected, rtol=1e-12, atol=1e-12)


def test_the_token_removals_never_exceed_their_cap():
    spec = uvc.ViTSpec(depth=4, embed_dim=16, num_heads=2, mlp_hidden=32, patch_size=4, image_size=16)
    # Tokens alone, a budget just above what they can reach (block 0 keeping the prefix, one patch and
    # the fused token: 32.8 % here) and large steps, so the removals run into their cap.
    solver = uvc.Solver(spec, 0.33, warmup_epochs=0.0, prune_tokens=True, prune_heads=False, prune_dims=False,
                        prune_neurons=False, skip_blocks=False, lr_tokens=0.5)
    totals = []
    for t in range(200):
        solver.step(*_scores(spec), None, lr=1e-3, epoch=1.0)  # no token scores: every token alike
        r = np.array(_fields(solver)["token_removal"])
        assert (r >= 0).all()
        totals.append(r.sum())
        valid_schedule(spec, solver.plan())
    assert max(totals) == pytest.approx(spec.num_patches - 2, abs=1e-9)
    assert max(totals) <= spec.num_patches - 2 + 1e-9
    assert min(solver.token_keep()) < spec.prefix_tokens + 5


def test_no_block_drops_tokens_with_its_attention_off():
    spec = uvc.ViTSpec.from_name(TINY)
    solver = uvc.Solver(spec, 0.5, warmup_epochs=0.0, prune_tokens=True, gate_granularity="part")
    removal = [0.0, 20.0, 30.0] + [0.0] * (spec.depth - 4)
    d = _edit_state(solver.state_dict(), token_removal=removal, token_committed=removal)
    solver.load_state_dict(d)
    assert solver.token_keep().tolist() == [197, 197, 177] + [147] * (spec.depth - 3)
    logits = solver.state_fields()["logits"].reshape(spec.depth, 2).copy()
    logits[1, 0] = -5.0  # block 1's MHSA is skipped: its 20 tokens stay
    solver.load_state_dict(_edit_state(d, logits=logits))
    assert solver.token_keep().tolist() == [197, 197, 197] + [167] * (spec.depth - 3)
    plan = solver.plan()
    assert not plan.layers[1].attn and plan.layers[1].mlp
    assert valid_schedule(spec, plan) == solver.token_keep().tolist()
    assert uvc.count(spec, plan).macs == pytest.approx(solver.stats()["plan_macs"], rel=1e-12)


def test_tokens_are_off_by_default_and_resume_bit_identically():
    spec = uvc.ViTSpec.from_name(TINY)
    default = uvc.Solver(spec, 0.5)
    assert _fields(default)["token_removal"] == [] and default.hyper["prune_tokens"] is False
    hyper = dict(HYPER, prune_tokens=True)
    concentration = np.linspace(0.5, 1.5, spec.depth)

    def drive(solver, steps, start=0):
        for t in range(start, start + steps):
            epoch = t / 10
            g = solver.sample_gates(epoch)
            solver.step(*_scores(spec), 0.5 - g, lr=1e-2, epoch=epoch,
                        token_scores=class_attention(spec, solver.token_keep(), concentration))

    whole = uvc.Solver(spec, 0.4, seed=3, **hyper)
    drive(whole, 60)
    first = uvc.Solver(spec, 0.4, seed=3, **hyper)
    drive(first, 25)
    resumed = uvc.Solver.from_state_dict(json.loads(json.dumps(first.state_dict(), allow_nan=False)))
    drive(resumed, 35, start=25)
    assert resumed.state_dict() == whole.state_dict()
    assert whole.token_keep()[-1] < spec.num_tokens


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(prune_tokens=1), TypeError, "prune_tokens"),
    (dict(prune_tokens=True, lr_tokens=1.5), ValueError, "lr_tokens"),
    (dict(budget_damping=-1.0), ValueError, "budget_damping"),
])
def test_bad_token_options_name_the_argument(kwargs, error, name):
    with pytest.raises(error, match=name):
        uvc.Solver(uvc.ViTSpec.from_name(TINY), 0.5, **kwargs)


def test_token_pruning_needs_three_patches_and_bad_token_scores_are_refused():
    no_class = uvc.ViTSpec(depth=3, embed_dim=16, num_heads=2, mlp_hidden=32, patch_size=4, image_size=16,
                           prefix_tokens=0, classifier_heads=1, pool="avg")
    # Without a class token the tokens are ranked by the attention they receive.
    assert uvc.Solver(no_class, 0.5, prune_tokens=True).hyper["prune_tokens"]
    with pytest.raises(ValueError, match="prune_tokens: needs depth >= 2 and at least 3 patches"):
        uvc.Solver(no_class.replace(image_size=(8, 4)), 0.5, prune_tokens=True)
    spec = uvc.ViTSpec.from_name(TINY)
    solver = uvc.Solver(spec, 0.5, warmup_epochs=0.0, prune_tokens=True)
    scores = _scores(spec)
    good = class_attention(spec, solver.token_keep(), np.ones(spec.depth))
    with pytest.raises(ValueError, match="token_scores"):
        solver.step(*scores, None, lr=1e-4, epoch=1.0, token_scores=good[:, :-1].copy())
    bad = good.copy()
    bad[2, 5] = -0.1
    with pytest.raises(ValueError, match="token_scores"):
        solver.step(*scores, None, lr=1e-4, epoch=1.0, token_scores=bad)
    with pytest.raises(TypeError, match="token_scores"):
        solver.step(*scores, None, lr=1e-4, epoch=1.0, token_scores=good.astype(np.float32))
    assert solver.stats()["search_steps"] == 0, "refused steps change nothing"
