"""USDC on torch: group gates against the Swift reference, gate-network MACs against torch's
counter, the search wrapper (Eq. 8, resource loss, physical pruning), the dynamic model
(batch-level skipping, average MACs) and its save/load."""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

import uvc
from uvc import usdc
from uvc.torch import count_macs
from uvc.torch.usdc import (GATE_KINDS, DynamicViT, GateNet, ResourceBudget, USDCFinetune, USDCSearch, gate_macs,
                            group_gates, load, save)

KW = dict(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=3, num_heads=4)


def timm_vit(seed=0):
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **KW)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def images(n, seed=0):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("grouping", ["halving", "sample", "batch", "mixed"])
@pytest.mark.parametrize("straight_through", [True, False])
def test_torch_group_gates_equal_the_swift_reference(grouping, straight_through):
    p = usdc.GroupSampler(7).sample(23, 6, grouping)
    logits = np.random.default_rng(0).normal(0, 1.5, (23, 6))
    up, upp = np.random.default_rng(1).normal(size=(2, 23, 6))
    ref_gates, ref_probs = usdc.group_gates(logits, p.groups, p.noise, tau=0.6, straight_through=straight_through)
    ref_grad = usdc.group_gates_backward(logits, p.groups, p.noise, up, upp, tau=0.6)
    x = torch.tensor(logits, requires_grad=True)
    gates, probs = group_gates(x, torch.from_numpy(p.groups), torch.from_numpy(p.sizes), torch.from_numpy(p.noise),
                               tau=0.6, straight_through=straight_through)
    ((gates * torch.from_numpy(up)).sum() + (probs * torch.from_numpy(upp)).sum()).backward()
    if straight_through:
        np.testing.assert_array_equal(gates.detach().numpy(), ref_gates)
    else:
        np.testing.assert_allclose(gates.detach().numpy(), ref_gates, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(probs.detach().numpy(), ref_probs, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", GATE_KINDS)
def test_gate_macs_match_torchs_counter(kind):
    gate = GateNet(kind, 32, hidden=12, kernel=3).eval()
    x = torch.randn(1, 17, 32)
    assert count_macs(gate, x)["macs"] == gate_macs(kind, 32, 17, hidden=12, kernel=3, convention="fvcore")


def test_fresh_gates_keep_every_part_on_and_the_model_unchanged():
    model = timm_vit().eval()
    x = images(6)
    with torch.no_grad():
        dense = model(x)
    search = USDCSearch(model, 0.5, static=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense, rtol=0, atol=0)
    search.remove()
    assert not hasattr(model, "usdc")


def test_search_forward_applies_static_and_dynamic_scales_to_the_branches():
    """Eq. 8 on the branches: x + a_part·g·branch(x) with heads and neuron groups scaled by a."""
    model = timm_vit().train()
    ref = timm_vit().train()
    search = USDCSearch(model, 0.5, neuron_group_size=16, static_mode="softmax", seed=3)
    with torch.no_grad():
        search.arch.head_logits.normal_()
        search.arch.neuron_logits.normal_()
        search.arch.part_logits.normal_()
    x = images(8)
    out = model(x)
    heads, neurons, parts = (t.detach() for t in search.arch.keep_probs())
    gates = [g.detach() for g in search._gates]
    # The same computation by hand on an untouched copy of the weights.
    h = ref.patch_embed(x)
    h = ref._pos_embed(h)
    for l, blk in enumerate(ref.blocks):
        a = blk.attn
        b, n, d = h.shape
        qkv = a.qkv(blk.norm1(h)).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
        att = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        att = att.transpose(1, 2).reshape(b, n, d) * heads[l].repeat_interleave(8)
        h = h + parts[l, 0] * gates[l][:, 0, None, None] * a.proj(att)
        m = blk.mlp
        hid = m.act(m.fc1(blk.norm2(h))) * neurons[l].repeat_interleave(16)
        h = h + parts[l, 1] * gates[l][:, 1, None, None] * m.fc2(hid)
    expected = ref.head(ref.norm(h)[:, 0])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamic", [False, True])
def test_resource_loss_in_torch_is_the_cores_with_its_gradient(dynamic):
    model = timm_vit().train()
    # Softmax mode: the task loss is not differentiated here, only the budget's path.
    search = USDCSearch(model, 0.4, dynamic=dynamic, neuron_group_size=16, gamma=100.0, convention="fvcore",
                        static_mode="softmax", seed=1)
    model(images(8))
    loss = search.resource_loss()
    heads, neurons, parts = (t.detach().double().numpy() for t in search.arch.keep_probs())
    if dynamic:
        rates = torch.stack(search._rates).detach().double().numpy()
        gate_probs = torch.stack([g.probs() for g in search.arch.gates]).detach().double().numpy()
        macs = np.tile([gate_macs(k, 32, 17, convention="fvcore") for k in GATE_KINDS], (3, 1))
    else:
        rates, gate_probs, macs = np.ones((3, 2)), np.zeros((3, 0)), np.zeros((3, 0))
    ref = usdc.resource_loss(search.spec, head_probs=heads, neuron_probs=neurons, part_probs=parts, rates=rates,
                             gate_macs=macs, gate_probs=gate_probs, target=0.4, convention="fvcore")
    assert loss.item() == pytest.approx(ref.loss, rel=1e-6)
    loss.backward()
    # a₀ = softmax(keep, prune)[0]: ∂a₀/∂keep = a₀(1 − a₀) = −∂a₀/∂prune. With gates, the rates
    # of later layers also depend on earlier static scales (the gates read the block input):
    # only the last layer's heads have the direct path alone.
    layers = slice(2, 3) if dynamic else slice(None)
    expected = (ref.grad["head_probs"] * heads * (1 - heads))[layers]
    grad = search.arch.head_logits.grad.double().numpy()[layers]
    np.testing.assert_allclose(grad[..., 0], expected, rtol=1e-5)
    np.testing.assert_allclose(grad[..., 1], -expected, rtol=1e-5)
    if dynamic:
        assert search.arch.gates[0].alpha.grad.abs().sum() > 0
        assert search.arch.gates[1].options[0].out.weight.grad.abs().sum() > 0


def test_sampled_static_scales_are_straight_through_keep_decisions_with_probability_a0():
    model = timm_vit().train()
    search = USDCSearch(model, 0.5, neuron_group_size=16, seed=4)
    with torch.no_grad():
        search.arch.head_logits.normal_(0.0, 1.5)
    heads = search.arch.keep_probs()[0].detach()
    draws = []
    for step in range(400):
        noise = torch.from_numpy(search.sampler.noise(search.arch.static_count))
        h, n, p = search.arch.static_scales(noise, 1.0)
        assert set(torch.cat([h.flatten(), n.flatten(), p.flatten()]).tolist()) <= {0.0, 1.0}
        draws.append(h.detach())
    freq = torch.stack(draws).mean(0)
    # Four binomial standard deviations.
    assert ((freq - heads).abs() <= 4 * (heads * (1 - heads) / 400).sqrt() + 1e-9).all()
    h.sum().backward()
    assert search.arch.head_logits.grad.abs().sum() > 0, "the gradient passes through the soft sample"
    # Eval: the decision the export keeps.
    h, _, _ = search.arch.static_scales(None, 1.0)
    assert torch.equal(h, (heads >= 0.5).to(h.dtype))


def extreme_search(model):
    """A search whose a and gate choices are decided (a₀ ∈ {0, 1}, one-hot option weights)."""
    search = USDCSearch(model, 0.5, neuron_group_size=16, seed=2)
    with torch.no_grad():
        arch = search.arch
        for t in (arch.head_logits, arch.neuron_logits, arch.part_logits):
            t[..., 0] = 50.0
            t[..., 1] = -50.0
        prune = torch.tensor([-50.0, 50.0])
        arch.head_logits[0, [1, 3]] = prune
        arch.neuron_logits[1, 2:] = prune
        arch.part_logits[2, 0] = prune                # layer 2 loses its MHSA
        for l, g in enumerate(arch.gates):
            g.alpha.fill_(-50.0)
            g.alpha[[0, 1, 3, 2][l]] = 50.0           # linear, mlp_ln, mlp_bn
            for opt in g.options:
                opt.out.weight.normal_(0.0, 0.5)
    return search


def test_exported_dynamic_model_is_physically_smaller_and_reproduces_the_search_model():
    model = timm_vit()
    search = extreme_search(model)
    model.train()
    for _ in range(3):  # BatchNorm statistics of the mlp_bn gate move
        model(images(16, seed=9))
    model.eval()
    plan = search.plan()
    assert [len(l.heads) for l in plan.layers] == [2, 4, 0] and [len(l.neurons) for l in plan.layers] == [128, 32, 128]
    assert not plan.layers[2].attn
    dyn = search.export().eval()
    assert [g.kind for g in dyn.gates] == ["linear", "mlp_ln", "mlp_bn"]
    assert sum(p.numel() for p in dyn.slim.parameters()) < sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("usdc"))
    for n in (1, 7, 32):
        x = images(n, seed=n)
        with torch.no_grad():
            torch.testing.assert_close(dyn(x), model(x), rtol=1e-5, atol=1e-5)


def test_exported_dynamic_model_reloads_without_training_code_and_reproduces_its_outputs(tmp_path):
    model = timm_vit()
    search = extreme_search(model)
    model.train()
    model(images(16, seed=9))
    dyn = search.export().eval()
    x = images(10, seed=4)
    with torch.no_grad():
        before = dyn(x)
    save(dyn, tmp_path / "dyn", meta={"mean": 0.5})
    again = load(tmp_path / "dyn")
    assert again.slim.meta == {"mean": 0.5} and not again.training
    with torch.no_grad():
        torch.testing.assert_close(again(x), before, rtol=0, atol=0)
    torch.save(x, tmp_path / "x.pt")
    torch.save(before, tmp_path / "y.pt")
    # Same thread count as here; a tolerance of float rounding only, since another process may
    # still split a matmul differently when the machine is loaded.
    code = (f"import sys; sys.modules['timm'] = None\n"
            f"import torch\ntorch.set_num_threads({torch.get_num_threads()})\nfrom uvc.torch.usdc import load\n"
            f"m = load({str(tmp_path / 'dyn')!r})\n"
            f"x, y = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'y.pt')!r})\n"
            f"assert 'uvc.torch.usdc.search' not in sys.modules\n"
            f"with torch.no_grad(): torch.testing.assert_close(m(x), y, rtol=0, atol=1e-6)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_batch_skips_a_part_for_real_and_average_macs_count_it():
    model = timm_vit()
    search = extreme_search(model)
    dyn = search.export().eval()
    calls = []
    dyn.slim.blocks[1].attn.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        dyn.gates[1].out.bias[0] = -1e3  # layer 1's MHSA gate says skip for any input
        dyn.gates[1].out.bias[1] = 1e3
        dyn.gates[0].out.bias.fill_(1e3)
        dyn.gates[2].out.bias.fill_(1e3)
        dyn.reset_stats()
        dyn(images(5))
        dyn(images(3))
    assert calls == []
    rates = dyn.execution_rates()
    assert rates[1, 0] == 0 and rates[1, 1] == 1 and rates[0].tolist() == [1, 1]
    assert np.isnan(rates[2, 0]) and rates[2, 1] == 1
    res = dyn.average_macs("fvcore")
    plan = dyn.plan
    layers = list(plan.layers)
    layers[1] = dataclasses.replace(layers[1], heads=(), v_index=(), qk_index=(), attn=False)
    skipped = uvc.ArchPlan(plan.spec, tuple(layers))
    gates = sum(gate_macs(g.kind, 32, 17, convention="fvcore") for g in dyn.gates)
    assert res["macs"] == pytest.approx(uvc.count(plan.spec, skipped, "fvcore").macs + gates, rel=1e-12)
    assert res["static_macs"] == pytest.approx(uvc.count(plan.spec, plan, "fvcore").macs + gates, rel=1e-12)


def test_dynamic_training_uses_one_decision_per_group_and_is_seeded():
    model = timm_vit()
    dyn = extreme_search(model).export().train()
    with torch.no_grad():
        for g in dyn.gates:
            g.out.bias.zero_()
    fine = USDCFinetune(dyn, 0.5)
    state = fine.state_dict()
    x = images(16)
    out = dyn(x)
    loss = fine.resource_loss()
    assert dyn.last_rates.shape == (3, 2)
    loss.backward()
    assert dyn.gates[0].out.weight.grad.abs().sum() > 0
    fine.load_state_dict(state)
    torch.testing.assert_close(dyn(x), out, rtol=0, atol=0)
    # The budget of a model whose every gate runs is its static cost plus the gate networks.
    res = fine.budget.evaluate(*(fine._fixed[k].double().numpy() for k in ("head_probs", "neuron_probs", "part_probs")),
                               np.ones((3, 2)), fine._fixed["gate_probs"].double().numpy())
    static = uvc.count(dyn.spec, dyn.plan).macs + sum(gate_macs(g.kind, 32, 17) for g in dyn.gates)
    assert res.macs == pytest.approx(static, rel=1e-12)


def test_dual_budget_raises_z_while_over_the_target():
    model = timm_vit().train()
    search = USDCSearch(model, 0.3, budget_mode="dual", dual_lr=2.0, seed=0)
    model(images(8))
    search.resource_loss()
    ratio = search.budget.last.ratio
    search.step()
    assert search.budget.z == pytest.approx(2.0 * (ratio - 0.3))
    assert search.budget.gamma == 0.0


def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="neuron_group_size"):
        USDCSearch(timm_vit(), 0.5, neuron_group_size=7)
    with pytest.raises(ValueError, match="grouping"):
        USDCSearch(timm_vit(), 0.5, grouping="random")
    with pytest.raises(ValueError, match="gate_kinds"):
        USDCSearch(timm_vit(), 0.5, gate_kinds=("gru",))
    with pytest.raises(ValueError, match="target"):
        USDCSearch(timm_vit(), -0.5)
    with pytest.raises(ValueError, match="kind"):
        GateNet("gru", 8)
    spec = uvc.torch.spec_from_model(timm_vit())
    plan = uvc.random_plan(spec, np.random.default_rng(0), skip_prob=0.0, tokens=True, drop_prob=1.0)
    with pytest.raises(ValueError, match="drops tokens"):
        DynamicViT(spec, plan, [{"kind": "linear", "hidden": 4, "kernel": 3}] * 3)


def test_static_target_adds_the_static_parts_own_penalty():
    spec = uvc.torch.spec_from_model(timm_vit())
    rng = np.random.default_rng(0)
    x = [rng.uniform(0.2, 0.9, s) for s in [(3, 4), (3, 8), (3, 2), (3, 2), (3, 2)]]
    gate = np.full((3, 2), 300.0)
    res = ResourceBudget(spec, 0.5, gate, static_target=0.8).evaluate(*x)
    full = usdc.resource_loss(spec, head_probs=x[0], neuron_probs=x[1], part_probs=x[2], rates=x[3], gate_macs=gate,
                              gate_probs=x[4], target=0.5)
    static = usdc.resource_loss(spec, head_probs=x[0], neuron_probs=x[1], part_probs=x[2], rates=np.ones((3, 2)),
                                target=0.8)
    assert res.loss == pytest.approx(full.loss + static.loss) and res.ratio == full.ratio
    np.testing.assert_allclose(res.grad["head_probs"], full.grad["head_probs"] + static.grad["head_probs"])
    np.testing.assert_array_equal(res.grad["rates"], full.grad["rates"])


def test_static_temperature_anneals_geometrically_and_sharpens_a0():
    model = timm_vit()
    search = USDCSearch(model, 0.5, static_tau=(1.0, 0.01), anneal_steps=4, seed=0)
    with torch.no_grad():
        search.arch.head_logits.normal_(0.0, 0.5)
    d = (search.arch.head_logits[..., 0] - search.arch.head_logits[..., 1]).detach()
    taus = []
    for _ in range(6):
        taus.append(search.arch.static_tau)
        search.step()
    np.testing.assert_allclose(taus, [1.0, 0.01 ** 0.25, 0.1, 0.01 ** 0.75, 0.01, 0.01])
    torch.testing.assert_close(search.arch.keep_probs()[0], torch.sigmoid(d / 0.01))
    state = search.state_dict()
    again = USDCSearch(timm_vit(), 0.5, static_tau=(1.0, 0.01), anneal_steps=4, seed=0)
    again.load_state_dict(state)
    assert again.arch.static_tau == pytest.approx(0.01)
