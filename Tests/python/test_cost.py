"""The cost model through the numpy API: reference numbers, consistency, gradients, errors."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

import uvc
from uvc.cost import RELAXED_FIELDS, expected_cost, relaxed_inputs
from uvc.plan import PLAN_ROW

# REFERENCE.md §8 (GMACs, 224x224, batch 1).
DENSE = {
    "deit_tiny_patch16_224": (1.2535, 1.2584),
    "deit_small_patch16_224": (4.5985, 4.6083),
    "deit_base_patch16_224": (17.563, 17.5827),
}

FUSE = uvc.cost.LAYER_COMPONENTS.index("fuse")


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_deit_matches_reference(name):
    spec = uvc.ViTSpec.from_name(name)
    uvc_g, fvcore_g = DENSE[name]
    # The table gives 5 significant digits; agreement to 1e-4 relative is better than 4.
    assert uvc.count(spec, convention="uvc").macs / 1e9 == pytest.approx(uvc_g, rel=1e-4)
    assert uvc.count(spec, convention="fvcore").macs / 1e9 == pytest.approx(fvcore_g, rel=1e-4)


def test_flops_are_twice_macs_and_breakdown_sums():
    spec = uvc.ViTSpec.from_name("deit_small_patch16_224")
    r = uvc.count(spec, convention="full")
    assert r.flops == 2 * r.macs
    assert r.layers.sum() + r.globals.sum() == pytest.approx(r.macs, rel=0, abs=0.5)
    assert r.layers.shape == (12, len(uvc.cost.LAYER_COMPONENTS))


def test_distilled_spec():
    spec = uvc.ViTSpec.from_name("deit_tiny_distilled_patch16_224")
    assert spec.num_tokens == 198 and spec.classifier_heads == 2
    r = uvc.count(spec, convention="fvcore")
    assert r.globals[2] == 2 * 192 * 1000


def exact_as_relaxed(plan):
    """The plan's counts as relaxed inputs, row by row by name (attn/mlp are the gates)."""
    c = plan.counts.astype(np.float64)
    column = {"attn_gate": "attn", "mlp_gate": "mlp"}
    return np.ascontiguousarray(np.stack([c[:, PLAN_ROW.index(column.get(f, f))] for f in RELAXED_FIELDS]))


def random_spec(rng):
    heads = int(rng.integers(1, 7))
    return uvc.ViTSpec(depth=int(rng.integers(1, 6)), embed_dim=int(rng.integers(4, 64)), num_heads=heads,
                       qk_head_dim=int(rng.integers(1, 17)), v_head_dim=int(rng.integers(1, 17)),
                       mlp_hidden=int(rng.integers(1, 129)), patch_size=int(rng.choice([2, 4, 7])),
                       image_size=28, in_channels=int(rng.integers(1, 4)),
                       prefix_tokens=int(rng.integers(1, 3)), num_classes=int(rng.integers(2, 20)))


def test_relaxed_at_integers_equals_exact(rng):
    drops = 0
    for _ in range(100):
        spec = random_spec(rng)
        plan = uvc.random_plan(spec, rng, drop_prob=0.5, qk=True)
        tokens = plan.counts[:, PLAN_ROW.index("tokens")]
        assert tokens[0] == spec.num_tokens and np.all(np.diff(tokens) <= 0)
        drops += int(np.sum(np.diff(tokens) < 0))
        for conv in ("uvc", "fvcore", "full"):
            report = uvc.count(spec, plan, conv)
            # The fuse column is non-zero exactly in the blocks that drop tokens.
            np.testing.assert_array_equal(report.layers[:-1, FUSE] > 0, np.diff(tokens) < 0)
            assert report.layers[-1, FUSE] == 0
            assert expected_cost(spec, exact_as_relaxed(plan), convention=conv) == pytest.approx(report.macs, rel=1e-12)
    assert drops > 50


def test_token_drop_breakdown():
    # DeiT-Tiny drops 197 -> 100 tokens in block 5: its MLP and norm2, later blocks and the
    # final norm see 100; its fuse component is the class-attention row plus the weighted sum.
    spec = uvc.ViTSpec.from_name("deit_tiny_patch16_224")
    dense = uvc.ArchPlan.dense(spec)
    plan = uvc.ArchPlan(spec, dense.layers[:6] + tuple(dataclasses.replace(l, tokens=100) for l in dense.layers[6:]))
    assert "fuse" in uvc.cost.LAYER_COMPONENTS
    r, d = uvc.count(spec, plan, "fvcore"), 192
    col = {name: r.layers[:, i] for i, name in enumerate(uvc.cost.LAYER_COMPONENTS)}
    np.testing.assert_array_equal(col["fuse"], [0] * 5 + [3 * 197 * 64 + (197 - 100 + 1) * d] + [0] * 6)
    np.testing.assert_array_equal(col["fc1"], [197 * d * 4 * d] * 5 + [100 * d * 4 * d] * 7)
    np.testing.assert_array_equal(col["qkv"], [197 * d * 3 * d] * 6 + [100 * d * 3 * d] * 6)
    np.testing.assert_array_equal(col["norm2"], [5 * 197 * d] * 5 + [5 * 100 * d] * 7)
    np.testing.assert_array_equal(col["attn_qk"], [197 * 197 * d] * 6 + [100 * 100 * d] * 6)
    assert r.globals[1] == 5 * 100 * d
    # Softmax counts the class-attention row too (h * N more elements).
    full = uvc.count(spec, plan, "full").layers[:, uvc.cost.LAYER_COMPONENTS.index("softmax")]
    assert full[5] == 3 * 197 * 197 + 3 * 197 and full[4] == 3 * 197 * 197 and full[6] == 3 * 100 * 100


def test_gradient_matches_central_differences(rng):
    # Away from the kinks: every block drops tokens (tokens[l+1] < tokens[l] by more than the step).
    for trial in range(20):
        spec = uvc.ViTSpec.from_name("deit_base_patch16_224") if trial == 0 else random_spec(rng)
        bound = dict(heads=spec.num_heads, qk_dim=spec.qk_head_dim, v_dim=spec.v_head_dim,
                     neurons=spec.mlp_hidden, attn_gate=1, mlp_gate=1, tokens=spec.num_tokens)
        upper = np.array([bound[f] for f in RELAXED_FIELDS], float)
        x = (0.05 + 0.9 * rng.random((len(RELAXED_FIELDS), spec.depth))) * upper[:, None]
        x[RELAXED_FIELDS.index("tokens")] = ((0.6 + 0.4 * rng.random()) * spec.num_tokens
                                             * np.cumprod(0.5 + 0.45 * rng.random(spec.depth)))
        x = np.ascontiguousarray(x)
        grad = np.empty_like(x)
        expected_cost(spec, x, grad, "full")
        for idx in np.ndindex(*x.shape):
            h = 1e-3 * max(1.0, abs(x[idx]))
            up, down = x.copy(), x.copy()
            up[idx] += h
            down[idx] -= h
            numeric = (expected_cost(spec, up, convention="full") - expected_cost(spec, down, convention="full")) / (2 * h)
            assert abs(numeric - grad[idx]) <= 1e-6 * max(abs(numeric), abs(grad[idx]), 1.0)


def test_relaxed_cost_by_name():
    spec = uvc.ViTSpec.from_name("deit_tiny_patch16_224")
    macs, grads = uvc.relaxed_cost(spec, heads=1.5, mlp_gate=np.linspace(0, 1, 12))
    assert set(grads) == set(RELAXED_FIELDS)
    assert macs < uvc.count(spec).macs
    # The MLP gate's gradient is the cost of one running MLP part, the same in every layer.
    mlp = 2 * 197 * 192 * 768
    np.testing.assert_allclose(grads["mlp_gate"], mlp)


def test_expected_cost_errors():
    spec = uvc.ViTSpec.from_name("deit_tiny_patch16_224")
    x = relaxed_inputs(spec)
    out = np.empty_like(x)
    with pytest.raises(TypeError, match="x: must be a float64 array"):
        expected_cost(spec, x.astype(np.float32), out)
    with pytest.raises(TypeError, match="x: must be a float64 array"):
        expected_cost(spec, [[1.0]], out)
    rows = len(RELAXED_FIELDS)
    with pytest.raises(ValueError, match=rf"x: expected shape \({rows}, 12\), got \(12, {rows}\)"):
        expected_cost(spec, np.ascontiguousarray(x.T), np.empty((12, 6)))
    with pytest.raises(ValueError, match="x: must be C-contiguous"):
        expected_cost(spec, np.tile(x, (1, 2))[:, ::2], out)
    with pytest.raises(ValueError, match="out: must be writable"):
        ro = np.empty_like(x)
        ro.flags.writeable = False
        expected_cost(spec, x, ro)
    with pytest.raises(ValueError, match="out: shares memory with argument 'x'"):
        expected_cost(spec, x, x)
    for field, bad in (("heads", np.nan), ("v_dim", -1.0), ("attn_gate", 1.5), ("tokens", 1e9), ("neurons", np.inf),
                       ("qk_dim", 65.0)):
        y = x.copy()
        y[RELAXED_FIELDS.index(field), 4] = bad
        with pytest.raises(ValueError, match=rf"{field}\[4\]"):
            expected_cost(spec, y, out)
    with pytest.raises(ValueError, match="convention"):
        expected_cost(spec, x, out, convention="flops")


def test_spec_errors():
    with pytest.raises(ValueError, match="spec.depth"):
        uvc.ViTSpec(depth=0, embed_dim=64, num_heads=4, mlp_hidden=256, patch_size=4, image_size=28)
    with pytest.raises(ValueError, match="patch_size"):
        uvc.ViTSpec(depth=2, embed_dim=64, num_heads=4, mlp_hidden=256, patch_size=5, image_size=28)
    with pytest.raises(ValueError, match="qk_head_dim must be given"):
        uvc.ViTSpec(depth=2, embed_dim=65, num_heads=4, mlp_hidden=256, patch_size=4, image_size=28)
    with pytest.raises(TypeError, match="depth must be an int"):
        uvc.ViTSpec(depth=2.0, embed_dim=64, num_heads=4, mlp_hidden=256, patch_size=4, image_size=28)
    with pytest.raises(ValueError, match="unknown model"):
        uvc.ViTSpec.from_name("resnet50")


def test_plan_errors_and_roundtrip(tmp_path, rng):
    spec = uvc.ViTSpec.from_name("deit_tiny_patch16_224")
    dense = uvc.ArchPlan.dense(spec)
    layer = dense.layers[0]
    bad = uvc.LayerPlan(heads=(0, 1, 2, 3), v_index=((0,),) * 4, neurons=layer.neurons, tokens=197)
    with pytest.raises(ValueError, match="heads: indices must lie in 0..2"):
        uvc.ArchPlan(spec, (bad,) + dense.layers[1:])
    bad = uvc.LayerPlan(heads=(0, 1), v_index=((0,), (0, 1)), neurons=layer.neurons, tokens=197)
    with pytest.raises(ValueError, match="same number"):
        uvc.ArchPlan(spec, (bad,) + dense.layers[1:])
    bad = uvc.LayerPlan(heads=(), v_index=(), neurons=layer.neurons, tokens=197, attn=True)
    with pytest.raises(ValueError, match="at least one"):
        uvc.ArchPlan(spec, (bad,) + dense.layers[1:])
    with pytest.raises(ValueError, match="depth 12"):
        uvc.ArchPlan(spec, dense.layers[1:])
    with pytest.raises(ValueError, match="drop_prob"):
        uvc.random_plan(spec, rng, drop_prob=1.5)
    plan = uvc.random_plan(spec, rng, qk=True)
    plan.save(tmp_path / "plan.json")
    again = uvc.ArchPlan.load(tmp_path / "plan.json")
    assert again == plan
    assert uvc.count(spec, again).macs == uvc.count(spec, plan).macs


def test_query_key_widths_in_plans(tmp_path, rng):
    spec = uvc.ViTSpec.from_name("deit_small_patch16_224")
    dense = uvc.ArchPlan.dense(spec)
    # Left out, qk_index is every query/key dim of every kept head, written out by the plan.
    layer = uvc.LayerPlan(heads=(1, 4), v_index=((0, 5),) * 2, neurons=(3,), tokens=197)
    plan = uvc.ArchPlan(spec, (layer,) + dense.layers[1:])
    assert plan.layers[0].qk_index == (tuple(range(64)),) * 2 and plan.layers[0].qk_dim == 64
    narrow = dataclasses.replace(layer, qk_index=((0, 1, 2), (5, 6, 7)))
    plan32 = uvc.ArchPlan(spec, (narrow,) + dense.layers[1:])
    # 61 fewer q and k rows in 2 heads: 2·N·D·2·61 in qkv, 2·N²·61 in QKᵀ (uvc convention).
    n, d = 197, 384
    assert uvc.count(spec, plan).macs - uvc.count(spec, plan32).macs == 2 * n * d * 2 * 61 + 2 * n * n * 61
    # Plans written before query/key widths existed (format 1) keep them all.
    old = plan32.to_dict()
    old["format"] = "uvc.plan/1"
    for l in old["layers"]:
        del l["qk_index"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert uvc.ArchPlan.load(tmp_path / "old.json").layers[0].qk_index == ((tuple(range(64)),) * 2)
    with pytest.raises(ValueError, match=r"qk_index has 1 entries, expected one per kept head \(2\)"):
        uvc.ArchPlan(spec, (dataclasses.replace(layer, qk_index=((0,),)),) + dense.layers[1:])
    with pytest.raises(ValueError, match=r"qk_index keeps \[1, 2\] dims in different heads"):
        uvc.ArchPlan(spec, (dataclasses.replace(layer, qk_index=((0,), (0, 1))),) + dense.layers[1:])
    with pytest.raises(ValueError, match=r"qk_index\[1\]: indices must lie in 0..63"):
        uvc.ArchPlan(spec, (dataclasses.replace(layer, qk_index=((0,), (64,))),) + dense.layers[1:])
    # q/k norms normalise over all of a head's dims: such a model keeps them all.
    normed = spec.replace(qk_norm=True)
    with pytest.raises(ValueError, match="qk_norm"):
        uvc.ArchPlan(normed, (narrow,) + uvc.ArchPlan.dense(normed).layers[1:])
    assert all(l.qk_dim == 64 for l in uvc.random_plan(normed, rng, qk=True).layers if l.attn)


def test_cli_flops(tmp_path, rng):
    spec = uvc.ViTSpec.from_name("deit_small_patch16_224")
    plan = uvc.random_plan(spec, rng)
    plan.save(tmp_path / "p.json")
    out = subprocess.run([sys.executable, "-m", "uvc", "flops", "deit_small_patch16_224", "--plan",
                          str(tmp_path / "p.json"), "--convention", "fvcore", "--json"],
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    assert d["macs"] == uvc.count(spec, plan, "fvcore").macs
    assert d["flops"] == 2 * d["macs"]
    assert d["dense_macs"] == uvc.count(spec, None, "fvcore").macs
    table = subprocess.run([sys.executable, "-m", "uvc", "flops", "deit_tiny_patch16_224"],
                           capture_output=True, text=True, check=True).stdout
    assert "1.2535 GMACs = 2.5070 GFLOPs" in table
    bad = subprocess.run([sys.executable, "-m", "uvc", "flops", "not_a_model"], capture_output=True, text=True)
    assert bad.returncode != 0 and "is not a timm model name" in bad.stderr
