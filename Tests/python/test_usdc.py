"""uvc.usdc (numpy API over the Swift core): group partitions, group gates and the resource loss."""
import numpy as np
import pytest

import uvc
from uvc import usdc


def halving(batch):
    """The halving rule in plain Python: half of what is left, rounded up, until one is left."""
    sizes, left = [], batch
    while left > 1:
        sizes.append((left + 1) // 2)
        left -= sizes[-1]
    return sizes + [1] if left else sizes


def test_group_sizes_sum_to_the_batch_and_follow_the_halving_rule():
    assert usdc.group_sizes(8).tolist() == [4, 2, 1, 1]
    assert usdc.group_sizes(7).tolist() == [4, 2, 1]
    assert usdc.group_sizes(1).tolist() == [1]
    assert usdc.group_sizes(256).tolist() == [128, 64, 32, 16, 8, 4, 2, 1, 1]
    for b in range(1, 400):
        sizes = usdc.group_sizes(b)
        assert sizes.sum() == b and len(sizes) == b.bit_length()
        assert sizes.tolist() == halving(b)


def test_sampler_is_seeded_shuffles_and_resumes_bit_for_bit():
    a, b = usdc.GroupSampler(11), usdc.GroupSampler(11)
    pa, pb = a.sample(32, 6), b.sample(32, 6)
    assert np.array_equal(pa.groups, pb.groups) and np.array_equal(pa.noise, pb.noise)
    assert np.bincount(pa.groups).tolist() == pa.sizes.tolist() == halving(32)
    assert pa.noise.shape == (6, 6)
    assert not np.array_equal(pa.groups, np.sort(pa.groups)), "members are shuffled"
    assert not np.array_equal(usdc.GroupSampler(12).sample(32, 6).groups, pa.groups)
    state = a.state_dict()
    nxt, noise = a.sample(100, 3), a.noise(7)
    c = usdc.GroupSampler(0)
    c.load_state_dict(state)
    again = c.sample(100, 3)
    assert np.array_equal(nxt.groups, again.groups) and np.array_equal(nxt.noise, again.noise)
    assert noise.shape == (7,) and np.array_equal(c.noise(7), noise)


def test_baseline_groupings_one_group_per_sample_or_per_batch():
    s = usdc.GroupSampler(1)
    p = s.sample(5, 2, "sample")
    assert p.groups.tolist() == [0, 1, 2, 3, 4] and p.sizes.tolist() == [1] * 5 and p.noise.shape == (5, 2)
    p = s.sample(5, 2, "batch")
    assert p.groups.tolist() == [0] * 5 and p.sizes.tolist() == [5] and p.noise.shape == (1, 2)
    with pytest.raises(ValueError, match="grouping"):
        s.sample(5, 2, "random")


def test_mixed_grouping_halves_half_the_batch_and_leaves_the_rest_alone():
    p = usdc.GroupSampler(2).sample(16, 2, "mixed")
    assert p.sizes.tolist() == [4, 2, 1, 1] + [1] * 8 and p.noise.shape == (12, 2)
    assert np.bincount(p.groups, minlength=12).tolist() == p.sizes.tolist()
    assert usdc.GroupSampler(2).sample(7, 0, "mixed").sizes.tolist() == [2, 1, 1] + [1] * 3


def reference_gates(logits, groups, noise, tau, straight_through):
    """Plain numpy: pool by group mean, one decision per group, broadcast back."""
    pooled = np.stack([logits[groups == k].mean(0) if (groups == k).any() else np.zeros(logits.shape[1])
                       for k in range(len(noise))])
    soft = 1 / (1 + np.exp(-(pooled + noise) / tau))
    gate = (soft > 0.5).astype(float) if straight_through else soft
    return gate[groups], (1 / (1 + np.exp(-pooled)))[groups]


@pytest.mark.parametrize("straight_through", [True, False])
def test_group_gates_match_a_plain_reference(rng, straight_through):
    p = usdc.GroupSampler(5).sample(37, 4)
    logits = rng.normal(0, 2, (37, 4))
    gates, probs = usdc.group_gates(logits, p.groups, p.noise, tau=0.7, straight_through=straight_through)
    ref_g, ref_p = reference_gates(logits, p.groups, p.noise, 0.7, straight_through)
    np.testing.assert_allclose(gates, ref_g, atol=1e-12)
    np.testing.assert_allclose(probs, ref_p, atol=1e-12)
    for k in range(p.group_count):
        members = gates[p.groups == k]
        assert (members == members[0]).all(), "one decision per group"


def test_whole_batch_partition_takes_one_decision_per_batch(rng):
    logits = rng.normal(0.2, 1, (16, 2))
    part = usdc.whole_batch(16, 2)
    gates, _ = usdc.group_gates(logits, part.groups, part.noise)
    assert gates.tolist() == [[float(m > 0) for m in logits.mean(0)]] * 16


def test_group_gates_backward_matches_finite_differences(rng):
    p = usdc.GroupSampler(2).sample(13, 3)
    logits = rng.normal(0, 1.5, (13, 3))
    up, upp = rng.normal(size=(13, 3)), rng.normal(size=(13, 3))

    def loss(x):
        g, pr = usdc.group_gates(x, p.groups, p.noise, tau=0.5, straight_through=False)
        return (g * up).sum() + (pr * upp).sum()

    grad = usdc.group_gates_backward(logits, p.groups, p.noise, up, upp, tau=0.5)
    fd = np.zeros_like(logits)
    for i in np.ndindex(*logits.shape):
        e = np.zeros_like(logits)
        e[i] = 1e-6
        fd[i] = (loss(logits + e) - loss(logits - e)) / 2e-6
    np.testing.assert_allclose(grad, fd, atol=1e-7)


SPEC = uvc.ViTSpec(depth=3, embed_dim=32, num_heads=4, mlp_hidden=64, patch_size=4, image_size=16, num_classes=10)


def loss_inputs(rng, groups=8, options=3):
    d = SPEC.depth
    return dict(head_probs=rng.uniform(0.1, 0.9, (d, SPEC.num_heads)), neuron_probs=rng.uniform(0.1, 0.9, (d, groups)),
                part_probs=rng.uniform(0.1, 0.9, (d, 2)), rates=rng.uniform(0.1, 0.9, (d, 2)),
                gate_macs=rng.uniform(100, 3000, (d, options)), gate_probs=rng.uniform(0.1, 0.9, (d, options)))


@pytest.mark.parametrize("convention", ["uvc", "fvcore", "full"])
def test_resource_loss_gradient_matches_finite_differences(rng, convention):
    x = loss_inputs(rng)
    res = usdc.resource_loss(SPEC, **x, target=0.45, gamma=100.0, dual=2.0, convention=convention)
    assert res.loss == pytest.approx(100 * (res.ratio - 0.45) ** 2 + 2 * (res.ratio - 0.45))
    for name, value in x.items():
        h = 1e-2 if name == "gate_macs" else 1e-6
        fd = np.zeros_like(value)
        for i in np.ndindex(*value.shape):
            up, down = dict(x), dict(x)
            up[name], down[name] = value.copy(), value.copy()
            up[name][i] += h
            down[name][i] -= h
            fd[i] = (usdc.resource_loss(SPEC, **up, target=0.45, dual=2.0, convention=convention).loss
                     - usdc.resource_loss(SPEC, **down, target=0.45, dual=2.0, convention=convention).loss) / (2 * h)
        np.testing.assert_allclose(res.grad[name], fd, rtol=1e-6, atol=1e-9, err_msg=name)


def test_resource_loss_of_zero_one_inputs_is_the_exact_cost_of_the_plan_plus_gates():
    d = SPEC.depth
    heads = np.array([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1]], float)
    neurons = np.zeros((d, 8))
    neurons[0, [0, 3]] = neurons[1, 1] = neurons[2, :] = 1
    parts = np.array([[1, 1], [1, 0], [0, 0]], float)
    gate_macs = np.full((d, 1), 500.0)
    res = usdc.resource_loss(SPEC, head_probs=heads, neuron_probs=neurons, part_probs=parts, rates=np.ones((d, 2)),
                             gate_macs=gate_macs, gate_probs=np.ones((d, 1)), target=0.5, convention="fvcore")
    v = tuple(range(SPEC.v_head_dim))
    layers = []
    for l in range(d):
        kept = tuple(np.flatnonzero(heads[l]).tolist())
        cols = tuple(j for g in np.flatnonzero(neurons[l]) for j in range(8 * g, 8 * g + 8))
        layers.append(uvc.LayerPlan(heads=kept if parts[l, 0] else (), v_index=(v,) * len(kept) if parts[l, 0] else (),
                                    neurons=cols if parts[l, 1] else (), tokens=SPEC.num_tokens,
                                    attn=bool(parts[l, 0]), mlp=bool(parts[l, 1])))
    plan = uvc.ArchPlan(SPEC, tuple(layers))
    dense = uvc.count(SPEC, None, "fvcore").macs
    # Layer 2 is gone, and its gate network with it.
    assert res.macs == pytest.approx(uvc.count(SPEC, plan, "fvcore").macs + 2 * 500, rel=1e-12)
    assert res.ratio == pytest.approx(res.macs / dense, rel=1e-12)


def test_resource_loss_without_gate_networks_and_rates_one_is_the_static_cost(rng):
    x = loss_inputs(rng)
    del x["gate_macs"], x["gate_probs"]
    x["rates"] = np.ones((SPEC.depth, 2))
    res = usdc.resource_loss(SPEC, **x, target=0.5)
    heads = x["head_probs"].sum(1)
    macs, _ = uvc.relaxed_cost(SPEC, heads=heads, neurons=8 * x["neuron_probs"].sum(1),
                               attn_gate=x["part_probs"][:, 0], mlp_gate=x["part_probs"][:, 1])
    assert res.macs == pytest.approx(macs, rel=1e-12)


def test_bad_arguments_raise_naming_them(rng):
    x = loss_inputs(rng)
    with pytest.raises(ValueError, match="rates"):
        usdc.resource_loss(SPEC, **dict(x, rates=np.full((3, 2), 1.5)), target=0.5)
    with pytest.raises(ValueError, match="neuron_probs"):
        usdc.resource_loss(SPEC, **dict(x, neuron_probs=np.full((3, 7), 0.5)), target=0.5)
    with pytest.raises(ValueError, match="head_probs"):
        usdc.resource_loss(SPEC, **dict(x, head_probs=np.full((3, 5), 0.5)), target=0.5)
    with pytest.raises(ValueError, match="target"):
        usdc.resource_loss(SPEC, **x, target=-1.0)
    with pytest.raises(ValueError, match="dual"):
        usdc.resource_loss(SPEC, **x, target=0.5, dual=-1.0)
    with pytest.raises(TypeError, match="rates"):
        usdc.resource_loss(SPEC, **dict(x, rates=[["a", "b"]] * 3), target=0.5)
    with pytest.raises(ValueError, match="gate_macs and gate_probs"):
        usdc.resource_loss(SPEC, **dict(x, gate_probs=None), target=0.5)
    p = usdc.GroupSampler(0).sample(4, 2)
    with pytest.raises(ValueError, match="groups"):
        usdc.group_gates(np.zeros((4, 2)), [0, 1, 2, 9], p.noise)
    with pytest.raises(ValueError, match="noise"):
        usdc.group_gates(np.zeros((4, 2)), p.groups, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="tau"):
        usdc.group_gates(np.zeros((4, 2)), p.groups, p.noise, tau=0.0)
    with pytest.raises(TypeError, match="groups"):
        usdc.group_gates(np.zeros((4, 2)), np.zeros(4), p.noise)
    with pytest.raises(ValueError, match="batch"):
        usdc.GroupSampler(0).sample(0, 2)
    with pytest.raises(TypeError, match="seed"):
        usdc.GroupSampler("1")
    zero = uvc._core.encode_state(b"uvc.arch" + bytes([2, 0, 0, 0, 1, 0, 0, 0]) + bytes(32))
    with pytest.raises(ValueError, match="all-zero"):
        usdc.GroupSampler(0).load_state_dict({"format": usdc.SAMPLER_FORMAT, "state": zero})
    with pytest.raises(ValueError, match="group sampler"):
        usdc.GroupSampler(0).load_state_dict({"format": usdc.SAMPLER_FORMAT, "state": uvc.Solver(
            uvc.ViTSpec.from_name("deit_tiny_patch16_224")).state_dict()["state"]})
