"""The latency cost model (`uvc.LatencyTable`, priced by the Swift core) against an independent
numpy interpolation, its relaxed form and gradient, the tables it refuses, and the solver spending
a budget in milliseconds."""
import json

import numpy as np
import pytest

import uvc
from uvc.cost import RELAXED_FIELDS, relaxed_inputs

SPEC = uvc.ViTSpec(depth=4, embed_dim=64, num_heads=4, mlp_hidden=256, patch_size=4, image_size=28, in_channels=1,
                   num_classes=10)


def make_table(spec=SPEC, v_dims=(1, 4, 8, 12, 16), neurons=(1, 32, 64, 96, 128, 160, 192, 224, 256), seed=0,
               batch_size=1):
    """A table with times rising in every count, plus a slow odd width as real CPUs show."""
    rng = np.random.default_rng(seed)
    heads = list(range(1, spec.num_heads + 1))
    att = [[0.05 + 0.01 * h * v + (0.02 if v == 12 else 0.0) + 0.001 * rng.random() for v in v_dims] for h in heads]
    mlp = [0.04 + 0.0007 * n + 0.001 * rng.random() for n in neurons]
    return {"format": "uvc.latency/1", "spec": spec.to_dict(),
            "device": {"type": "cpu", "name": "test", "torch": "x", "threads": 1, "dtype": "float32", "sdpa": False},
            "batch_size": batch_size, "heads": heads, "v_dims": list(v_dims), "neurons": list(neurons),
            "attention_ms": att, "mlp_ms": mlp, "fixed_ms": 0.3}


def reference(table, plan):
    """fixed + Σ bilinear / linear interpolation, by numpy on the raw table."""
    heads, v, n = (np.array(table[k], dtype=float) for k in ("heads", "v_dims", "neurons"))
    att, mlp = np.array(table["attention_ms"]), np.array(table["mlp_ms"])
    total = table["fixed_ms"]
    for layer in plan.layers:
        if layer.attn:
            per_head = np.array([np.interp(layer.v_dim, v, row) for row in att])
            total += np.interp(len(layer.heads), heads, per_head)
        if layer.mlp:
            total += np.interp(len(layer.neurons), n, mlp)
    return total


def test_predict_equals_the_interpolated_table_on_random_plans():
    table = make_table()
    lt = uvc.LatencyTable(table)
    rng = np.random.default_rng(1)
    for _ in range(100):
        plan = uvc.random_plan(SPEC, rng, skip_prob=0.2, tokens=False)
        assert lt.predict(plan) == pytest.approx(reference(table, plan), rel=1e-12)
    total, layers = lt.breakdown(uvc.ArchPlan.dense(SPEC))
    assert layers.shape == (4, 2)
    assert total == pytest.approx(0.3 + 4 * (table["attention_ms"][-1][-1] + table["mlp_ms"][-1]))
    assert lt.dense_ms == pytest.approx(total)


def test_a_measured_dense_latency_scales_the_block_parts():
    table = make_table()
    raw = uvc.LatencyTable(table)
    assert raw.scale == 1.0
    scaled = uvc.LatencyTable(dict(table, dense_ms=0.3 + 0.75 * (raw.dense_ms - 0.3)))
    assert scaled.scale == pytest.approx(0.75) and scaled.predict() == pytest.approx(table["fixed_ms"] + 0.75 *
                                                                                      (raw.dense_ms - 0.3))
    plan = uvc.random_plan(SPEC, np.random.default_rng(4), tokens=False)
    assert scaled.predict(plan) - 0.3 == pytest.approx(0.75 * (raw.predict(plan) - 0.3))
    with pytest.raises(ValueError, match="dense_ms must be finite and above fixed_ms"):
        uvc.LatencyTable(dict(table, dense_ms=0.2))


def test_at_grid_points_the_table_and_in_between_the_neighbours():
    table = make_table()
    lt = uvc.LatencyTable(table)
    dense = uvc.ArchPlan.dense(SPEC)

    def with_layer0(v_dim, neurons):
        layer = dense.layers[0]
        first = uvc.LayerPlan(heads=layer.heads, v_index=tuple(tuple(range(v_dim)) for _ in layer.heads),
                              neurons=tuple(range(neurons)), tokens=layer.tokens)
        return uvc.ArchPlan(SPEC, (first,) + dense.layers[1:])

    rest = lt.predict(dense) - table["attention_ms"][-1][-1] - table["mlp_ms"][-1]
    for j, v in enumerate(table["v_dims"]):
        for k, n in enumerate(table["neurons"]):
            assert lt.predict(with_layer0(v, n)) - rest == pytest.approx(table["attention_ms"][-1][j] + table["mlp_ms"][k])
    # Between 8 and 12 value dims the MHSA time walks the line between the two measured ones.
    a8, a12 = table["attention_ms"][-1][2], table["attention_ms"][-1][3]
    times = [lt.predict(with_layer0(v, 256)) - rest - table["mlp_ms"][-1] for v in (8, 9, 10, 11, 12)]
    assert times == pytest.approx([a8 + (a12 - a8) * t / 4 for t in range(5)])
    assert all(min(a8, a12) - 1e-12 <= t <= max(a8, a12) + 1e-12 for t in times)


def test_relaxed_latency_equals_the_plan_and_its_gradient_finite_differences():
    lt = uvc.LatencyTable(make_table())
    rng = np.random.default_rng(2)
    for _ in range(20):
        plan = uvc.random_plan(SPEC, rng, skip_prob=0.3, tokens=False)
        # A skipped part's counts are 0 in the plan row; any count prices it at 0 when its gate is 0.
        x = relaxed_row(plan)
        x[RELAXED_FIELDS.index("tokens")] = SPEC.num_tokens
        assert lt.expected(x) == pytest.approx(lt.predict(plan), rel=1e-12)
    x = relaxed_inputs(SPEC, heads=[1.3, 2.5, 3.7, 2.2], v_dim=[5.5, 9.1, 13.3, 2.6],
                       neurons=[40.0, 100.5, 210.2, 17.0], attn_gate=[0.3, 0.9, 0.5, 0.8], mlp_gate=[0.7, 0.2, 0.6, 0.4])
    grad = np.empty_like(x)
    lt.expected(x, grad)
    for field in ("heads", "v_dim", "neurons", "attn_gate", "mlp_gate"):
        i = RELAXED_FIELDS.index(field)
        for l in range(4):
            up, down = x.copy(), x.copy()
            up[i, l] += 1e-5
            down[i, l] -= 1e-5
            assert grad[i, l] == pytest.approx((lt.expected(up) - lt.expected(down)) / 2e-5, rel=1e-6, abs=1e-9)
    assert (grad[RELAXED_FIELDS.index("tokens")] == 0).all(), "tokens are not priced"
    assert (grad[RELAXED_FIELDS.index("qk_dim")] == 0).all(), "q/k stay at the full width the table timed"


def test_tables_that_cannot_price_a_plan_are_refused_naming_the_table_and_the_point(tmp_path):
    table = make_table()
    holes = json.loads(json.dumps(table))
    holes["attention_ms"][1][2] = 0.0
    with pytest.raises(ValueError, match=r"latency table t\.json: attention_ms: must be finite and positive; "
                                         r"at heads=2, v_dims=8 it is 0\.0"):
        uvc.LatencyTable(holes, source="t.json")
    short = dict(table, neurons=table["neurons"][:-1], mlp_ms=table["mlp_ms"][:-1])
    with pytest.raises(ValueError, match="neurons: has no point at 256.*extrapolating above the grid is refused"):
        uvc.LatencyTable(short)
    with pytest.raises(ValueError, match="expected format 'uvc.latency/4'"):
        uvc.LatencyTable(dict(table, format="uvc.latency/0"))
    with pytest.raises(ValueError, match=r"missing keys \['mlp_ms'\]"):
        uvc.LatencyTable({k: v for k, v in table.items() if k != "mlp_ms"})
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(table))
    lt = uvc.LatencyTable.load(path)
    assert lt == uvc.LatencyTable(lt.to_dict()) and lt.source == str(path)
    with pytest.raises(FileNotFoundError, match="uvc profile"):
        uvc.LatencyTable.load(tmp_path / "none.json")
    other = SPEC.replace(depth=6)
    with pytest.raises(ValueError, match=f"latency table {path} was measured for another model shape "
                                         r"\(depth: table 4, model 6\)"):
        lt.check(other)
    with pytest.raises(ValueError, match="measured at batch size 1, not 64"):
        lt.check(SPEC, batch_size=64)
    with pytest.raises(ValueError, match=r"measured on cpu \(test\), not cuda:0"):
        lt.check(SPEC, device="cuda:0")
    assert lt.check(SPEC, batch_size=1, device="cpu") is lt
    drops = uvc.random_plan(SPEC.replace(depth=4), np.random.default_rng(0), drop_prob=1.0)
    with pytest.raises(ValueError, match="prices plans that keep all 50"):
        lt.predict(drops)


def run_search(solver, steps=1200, seed=3):
    rng = np.random.default_rng(seed)
    heads, dims, neurons = (rng.random(shape) + 0.1 for shape in solver._groups)
    for t in range(steps):
        epoch = t / 100
        gates = solver.sample_gates(epoch)
        solver.step(dims.sum(-1), dims, neurons, gates - 2, lr=1e-3, epoch=epoch)
    return solver


def test_plans_with_narrow_queries_and_keys_are_refused_not_priced_as_full():
    # The table timed every MHSA at full q/k width; pricing a narrower one as full would be wrong.
    lt = uvc.LatencyTable(make_table())
    plan = uvc.random_plan(SPEC, np.random.default_rng(7), skip_prob=0.0, tokens=False, qk=True)
    layer = next(i for i, l in enumerate(plan.layers) if l.qk_dim < SPEC.qk_head_dim)
    with pytest.raises(ValueError, match=rf"plan: layer {layer} keeps \d+ of 16 query/key dims per head"):
        lt.predict(plan)
    x = relaxed_inputs(SPEC, qk_dim=[16, 16, 8.5, 16])
    with pytest.raises(ValueError, match=r"qk_dim\[2\] = 8.5: the latency table timed"):
        lt.expected(x)


def test_the_solver_spends_a_latency_budget_on_measured_widths():
    table = make_table()
    lt = uvc.LatencyTable(table)
    solver = run_search(uvc.Solver(SPEC, 0.5, latency=lt, warmup_epochs=0.1, lr_counts=0.05, seed=1))
    stats = solver.stats()
    assert stats["unit"] == "ms" and solver.dense_macs == pytest.approx(lt.dense_ms)
    plan = solver.plan()
    ratio = lt.predict(plan) / lt.dense_ms
    assert 0.4 < ratio <= 0.5 * 1.0001
    for layer in plan.layers:
        if layer.attn:
            assert layer.v_dim in table["v_dims"]
        if layer.mlp:
            assert len(layer.neurons) in table["neurons"]
    # Resume: the state carries the table; another table is refused.
    state = json.loads(json.dumps(solver.state_dict()))
    again = uvc.Solver.from_state_dict(state)
    assert again.plan() == plan and again.latency == lt
    other = uvc.Solver(SPEC, 0.5, latency=uvc.LatencyTable(make_table(seed=5)))
    with pytest.raises(ValueError, match="saved with another latency table"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="saved with another latency table|saved with a MACs budget"):
        uvc.Solver(SPEC, 0.5).load_state_dict(state)
    with pytest.raises(ValueError, match="round_to"):
        solver.plan(round_to=8)


def test_latency_budget_errors_before_any_step():
    lt = uvc.LatencyTable(make_table())
    # With every block part skipped only the fixed part is left.
    with pytest.raises(ValueError, match=r"budget: .* ms .* is below the smallest cost the enabled options can reach"):
        uvc.Solver(SPEC, 0.9 * 0.3 / lt.dense_ms, latency=lt)
    assert uvc.Solver(SPEC, budget_ms=lt.dense_ms / 2, latency=lt).budget_macs == pytest.approx(lt.dense_ms / 2)
    with pytest.raises(ValueError, match="budget_ms must lie in"):
        uvc.Solver(SPEC, budget_ms=2 * lt.dense_ms, latency=lt)
    with pytest.raises(ValueError, match="budget_ms needs a latency table"):
        uvc.Solver(SPEC, budget_ms=1.0)
    with pytest.raises(ValueError, match="budget_macs and a latency table exclude each other"):
        uvc.Solver(SPEC, budget_macs=1e6, latency=lt)
    with pytest.raises(ValueError, match="prune_tokens"):
        uvc.Solver(SPEC, 0.5, latency=lt, prune_tokens=True)
    with pytest.raises(ValueError, match="another model shape"):
        uvc.Solver(SPEC.replace(mlp_hidden=128), 0.5, latency=lt)
    with pytest.raises(TypeError, match="latency must be a uvc.LatencyTable"):
        uvc.Solver(SPEC, 0.5, latency=make_table())


def make_token_table(spec=SPEC, tokens=(3, 13, 25, 50), seed=0):
    """`make_table` with a token axis: every time rising in tokens, drops costing more with more tokens."""
    base = make_table(spec, seed=seed)
    rng = np.random.default_rng(seed + 1)
    n = np.asarray(tokens, dtype=float) / spec.num_tokens
    att = np.array(base["attention_ms"])[..., None] * (0.2 + 0.8 * n ** 1.5) + 0.001 * rng.random(len(tokens))
    mlp = np.array(base["mlp_ms"])[:, None] * (0.1 + 0.9 * n) + 0.001 * rng.random(len(tokens))
    drop = [0.0] + [0.004 + 0.01 * t for t in n[1:]]
    return dict(base, format="uvc.latency/4", tokens=list(tokens), attention_ms=att.tolist(), mlp_ms=mlp.tolist(),
                drop_ms=drop)


def token_reference(table, plan):
    """fixed + Σ [A(h, v, n) + [drops]·D(n) + M(m, n')]: separable interpolation by numpy, axis by axis."""
    heads, v, m, t = (np.array(table[k], dtype=float) for k in ("heads", "v_dims", "neurons", "tokens"))
    att, mlp, drop = np.array(table["attention_ms"]), np.array(table["mlp_ms"]), np.array(table["drop_ms"])
    total = table["fixed_ms"]
    layers = plan.layers
    for l, layer in enumerate(layers):
        n = layer.tokens
        kept = layers[l + 1].tokens if l + 1 < len(layers) else n
        if layer.attn:
            over_t = np.array([[np.interp(n, t, att[i, j]) for j in range(len(v))] for i in range(len(heads))])
            total += np.interp(len(layer.heads), heads, [np.interp(layer.v_dim, v, row) for row in over_t])
            if kept < n:
                total += np.interp(n, t, drop)
        if layer.mlp:
            total += np.interp(len(layer.neurons), m, [np.interp(kept, t, row) for row in mlp])
    return total


def relaxed_row(plan):
    """The plan's counts as relaxed inputs (a skipped part's counts 1: its gate 0 prices it at 0)."""
    return relaxed_inputs(plan.spec, heads=[len(l.heads) if l.attn else 1 for l in plan.layers],
                          v_dim=[l.v_dim or 1 for l in plan.layers],
                          neurons=[len(l.neurons) if l.mlp else 1 for l in plan.layers],
                          attn_gate=[float(l.attn) for l in plan.layers], mlp_gate=[float(l.mlp) for l in plan.layers],
                          tokens=[l.tokens for l in plan.layers])


def test_a_token_axis_prices_plans_that_drop_tokens():
    table = make_token_table()
    lt = uvc.LatencyTable(table)
    assert lt.tokens == [3, 13, 25, 50]
    rng = np.random.default_rng(5)
    dropping = 0
    for _ in range(100):
        plan = uvc.random_plan(SPEC, rng, skip_prob=0.2, drop_prob=0.5)
        dropping += any(a.tokens > b.tokens for a, b in zip(plan.layers, plan.layers[1:]))
        assert lt.predict(plan) == pytest.approx(token_reference(table, plan), rel=1e-12)
        # The relaxed latency at the plan's counts is the plan's latency.
        assert lt.expected(relaxed_row(plan)) == pytest.approx(lt.predict(plan), rel=1e-12)
    assert dropping > 30
    # Format 1 is the one-token-point table of format 4.
    flat = make_table()
    one = dict(flat, format="uvc.latency/4", tokens=[SPEC.num_tokens], drop_ms=[0.0],
               attention_ms=np.array(flat["attention_ms"])[..., None].tolist(),
               mlp_ms=np.array(flat["mlp_ms"])[:, None].tolist())
    plan = uvc.random_plan(SPEC, rng, tokens=False)
    assert uvc.LatencyTable(one).predict(plan) == uvc.LatencyTable(flat).predict(plan)


def test_tables_timed_before_the_padded_value_path_warn():
    """Formats 1 and 2 timed SDPA on unpadded narrow value widths: they load and price as
    before, with a warning naming the table and the remedy; formats 3 and 4 and
    explicit-attention tables load silently."""
    import warnings
    tokens = make_token_table()
    plan = uvc.random_plan(SPEC, np.random.default_rng(3), tokens=False)
    sdpa = {**tokens["device"], "sdpa": True}
    for old in (dict(tokens, format="uvc.latency/2", device=sdpa), dict(make_table(), device=sdpa)):
        with pytest.warns(UserWarning, match=r"latency table old\.json \(uvc\.latency/[12]\).*uvc profile"):
            lt = uvc.LatencyTable(old, source="old.json")
        assert lt.predict(plan) == uvc.LatencyTable(dict(old, device=tokens["device"])).predict(plan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        uvc.LatencyTable(dict(tokens, device=sdpa))
        uvc.LatencyTable(dict(tokens, format="uvc.latency/3", device=sdpa))
        uvc.LatencyTable(dict(tokens, format="uvc.latency/2"))


def test_cpu_tables_timed_before_steady_malloc_warn_above_batch_1():
    """Formats 1 to 3 on a CPU at a batch above 1 were timed while freed memory went back to
    the OS (page faults): they load and price as before, with a warning naming the table and the
    remedy; at batch 1, on CUDA, or in format 4 they load silently."""
    import warnings
    tokens = make_token_table()
    plan = uvc.random_plan(SPEC, np.random.default_rng(4), tokens=False)
    cuda = {**tokens["device"], "type": "cuda"}
    for old in (dict(tokens, format="uvc.latency/3", batch_size=64), dict(make_table(), batch_size=8)):
        with pytest.warns(UserWarning, match=r"latency table old\.json \(uvc\.latency/[13]\).*page faults.*uvc profile"):
            lt = uvc.LatencyTable(old, source="old.json")
        assert lt.predict(plan) == uvc.LatencyTable(dict(old, batch_size=1)).predict(plan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        uvc.LatencyTable(dict(tokens, format="uvc.latency/3", batch_size=1))
        uvc.LatencyTable(dict(tokens, format="uvc.latency/3", batch_size=64, device=cuda))
        uvc.LatencyTable(dict(tokens, batch_size=64))


def test_chained_blocks_scale_each_token_column():
    """chain_ms[k] makes depth dense blocks at tokens[k] cost what they cost chained: column k of
    every part is scaled by chain_ms[k] / (depth · (A + M) dense at tokens[k]), then dense_ms's
    one factor applies on top."""
    table = make_token_table()
    att, mlp = np.array(table["attention_ms"]), np.array(table["mlp_ms"])
    parts = SPEC.depth * (att[-1, -1] + mlp[-1])
    factor = np.array([0.5, 0.6, 0.8, 0.9])
    chained = dict(table, chain_ms=(factor * parts).tolist())
    lt = uvc.LatencyTable(chained)
    np.testing.assert_allclose(lt.token_scale, factor, rtol=1e-12)
    expect = dict(table, attention_ms=(att * factor).tolist(), mlp_ms=(mlp * factor).tolist(),
                  drop_ms=(np.array(table["drop_ms"]) * factor).tolist())
    rng = np.random.default_rng(8)
    for _ in range(30):
        plan = uvc.random_plan(SPEC, rng, skip_prob=0.2, drop_prob=0.5)
        assert lt.predict(plan) == pytest.approx(token_reference(expect, plan), rel=1e-12)
    # The dense model at every token: the chain at all tokens plus the fixed part.
    assert lt.dense_ms == pytest.approx(table["fixed_ms"] + factor[-1] * parts[-1], rel=1e-12)
    measured = dict(chained, dense_ms=lt.dense_ms + 0.1)
    both = uvc.LatencyTable(measured)
    assert both.dense_ms == pytest.approx(lt.dense_ms + 0.1)
    assert both.scale == pytest.approx((lt.dense_ms + 0.1 - 0.3) / (lt.dense_ms - 0.3))
    assert uvc.LatencyTable(table).token_scale.tolist() == [1.0] * 4, "no chain_ms: no column scale"
    for bad in ([1.0, 2.0], [1.0, 0.0, 1.0, 1.0], [1.0, float("nan"), 1.0, 1.0]):
        with pytest.raises(ValueError, match="chain_ms must hold one finite, positive time per tokens point"):
            uvc.LatencyTable(dict(table, chain_ms=bad))


def test_the_token_rows_gradient_matches_finite_differences():
    lt = uvc.LatencyTable(make_token_table())
    # Tokens strictly decreasing off the grid points, so every drop indicator stays put.
    x = relaxed_inputs(SPEC, heads=[1.3, 2.5, 3.7, 2.2], v_dim=[5.5, 9.1, 13.3, 2.6],
                       neurons=[40.0, 100.5, 210.2, 17.0], attn_gate=[0.3, 0.9, 0.5, 0.8],
                       mlp_gate=[0.7, 0.2, 0.6, 0.4], tokens=[50.0, 41.5, 20.2, 7.7])
    grad = np.empty_like(x)
    lt.expected(x, grad)
    tokens = RELAXED_FIELDS.index("tokens")
    for i in (RELAXED_FIELDS.index(f) for f in RELAXED_FIELDS if f != "qk_dim"):
        for l in range(4):
            if i == tokens and l == 0:
                continue  # tokens[0] sits at the grid's end, where the one-sided slopes differ
            up, down = x.copy(), x.copy()
            up[i, l] += 1e-5
            down[i, l] -= 1e-5
            assert grad[i, l] == pytest.approx((lt.expected(up) - lt.expected(down)) / 2e-5, rel=1e-6, abs=1e-9)
    assert (grad[5, 1:] > 0).all(), "fewer tokens, less time"


def test_token_counts_below_the_grid_are_refused_and_the_solver_prunes_tokens_in_ms():
    table = make_token_table(tokens=(10, 25, 50))
    lt = uvc.LatencyTable(table)
    plan = uvc.random_plan(SPEC, np.random.default_rng(0), drop_prob=1.0)
    low = min(l.tokens for l in plan.layers)
    assert low < 10
    with pytest.raises(ValueError, match=rf"layer \d takes {low} tokens; the latency table's token grid "
                                         rf"\[10, 25, 50\] starts at 10: profile it at {low} tokens"):
        lt.predict(plan)
    with pytest.raises(ValueError, match="token grid starts at 10, above the 3 tokens a block may keep"):
        uvc.Solver(SPEC, 0.5, latency=lt, prune_tokens=True)
    full = uvc.LatencyTable(make_token_table())
    solver = run_search(uvc.Solver(SPEC, 0.5, latency=full, prune_tokens=True, warmup_epochs=0.1, lr_counts=0.05,
                                   seed=1))
    plan = solver.plan()
    assert full.predict(plan) / full.dense_ms <= 0.5 * 1.0001
    assert plan.layers[-1].tokens < SPEC.num_tokens, "tokens are traded against widths in ms"
    assert solver.stats()["unit"] == "ms"
