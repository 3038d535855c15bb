"""USDC's budget in milliseconds: the resource loss priced by a latency table (against the
table's own price of the plan, and finite differences), the gate networks timed where the table
was made, the torch search and the dynamic model counting ms, the pipeline's latency budget, and
the refusals."""
import dataclasses
import json

import numpy as np
import pytest
import timm
import torch

import uvc
from conftest import TINY
from uvc import usdc
from uvc.torch.profile import profile
from uvc.torch.usdc import USDCFinetune, USDCSearch, gate_ms
from uvc.torch.usdc.pipeline import finetune, search

SPEC = uvc.ViTSpec(depth=3, embed_dim=32, num_heads=4, mlp_hidden=128, patch_size=4, image_size=16, in_channels=1,
                   num_classes=5)
KW = dict(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=3, num_heads=4)


def table_dict(spec=SPEC, batch_size=4):
    """A table with times rising in every count and a step in the MLP."""
    heads, v_dims, neurons = list(range(1, spec.num_heads + 1)), [1, 4, 8], [1, 32, 64, 128]
    att = [[0.05 + 0.02 * h + 0.003 * h * v for v in v_dims] for h in heads]
    mlp = [0.04 + 0.0007 * n + (0.01 if n >= 64 else 0.0) for n in neurons]
    return {"format": "uvc.latency/1", "spec": spec.to_dict(),
            "device": {"type": "cpu", "name": "test", "torch": "x", "threads": 1, "dtype": "float32", "sdpa": False},
            "batch_size": batch_size, "heads": heads, "v_dims": v_dims, "neurons": neurons,
            "attention_ms": att, "mlp_ms": mlp, "fixed_ms": 0.3}


def random_static(rng, spec=SPEC):
    """0/1 keep decisions of heads, neurons and parts, 0/1 rates, and the plan they describe."""
    d = spec.depth
    heads = (rng.random((d, spec.num_heads)) < 0.6).astype(float)
    neurons = (rng.random((d, spec.mlp_hidden)) < 0.5).astype(float)
    parts, rates = (rng.random((d, 2)) < 0.8).astype(float), (rng.random((d, 2)) < 0.7).astype(float)
    layers = []
    v = tuple(range(spec.v_head_dim))
    for l in range(d):
        kept_h, kept_n = tuple(np.flatnonzero(heads[l]).tolist()), tuple(np.flatnonzero(neurons[l]).tolist())
        attn = bool(parts[l, 0] and rates[l, 0] and kept_h)
        mlp = bool(parts[l, 1] and rates[l, 1] and kept_n)
        if not kept_h:
            parts[l, 0] = 0
        if not kept_n:
            parts[l, 1] = 0
        layers.append(uvc.LayerPlan(heads=kept_h if attn else (), v_index=(v,) * len(kept_h) if attn else (),
                                    neurons=kept_n if mlp else (), tokens=spec.num_tokens, attn=attn, mlp=mlp))
    return heads, neurons, parts, rates, uvc.ArchPlan(spec, tuple(layers))


def test_zero_one_inputs_cost_the_tables_ms_of_the_plan_plus_the_live_gate_networks():
    table = uvc.LatencyTable(table_dict())
    rng = np.random.default_rng(0)
    for _ in range(20):
        heads, neurons, parts, rates, plan = random_static(rng)
        gates = rng.random((3, 2)) * 0.02
        probs = rng.dirichlet(np.ones(2), size=3)
        res = usdc.resource_loss(SPEC, head_probs=heads, neuron_probs=neurons, part_probs=parts, rates=rates,
                                 gate_ms=gates, gate_probs=probs, target=0.5, gamma=10.0, latency=table)
        alive = 1 - (1 - parts[:, 0]) * (1 - parts[:, 1])
        expected = table.predict(plan) + float((alive * (gates * probs).sum(1)).sum())
        assert res.unit == "ms" and res.cost == pytest.approx(expected, rel=1e-12)
        assert res.ratio == pytest.approx(expected / table.dense_ms, rel=1e-12)
        assert res.loss == pytest.approx(10.0 * (res.ratio - 0.5) ** 2, rel=1e-12)
        assert set(res.grad) == {"head_probs", "neuron_probs", "part_probs", "rates", "gate_ms", "gate_probs"}


def test_the_ms_loss_gradient_matches_finite_differences():
    table = uvc.LatencyTable(table_dict())
    rng = np.random.default_rng(1)
    x = dict(head_probs=0.4 + 0.5 * rng.random((3, 4)), neuron_probs=0.3 + 0.6 * rng.random((3, 16)),
             part_probs=0.2 + 0.7 * rng.random((3, 2)), rates=0.2 + 0.7 * rng.random((3, 2)),
             gate_ms=0.01 * rng.random((3, 2)), gate_probs=rng.dirichlet(np.ones(2), size=3))

    def loss(**arrays):
        return usdc.resource_loss(SPEC, **arrays, target=0.4, gamma=50.0, dual=1.5, latency=table)

    res = loss(**x)
    for name, a in x.items():
        for idx in [(0, 0), (1, 1), (2, a.shape[1] - 1)]:
            h = 1e-7
            up, down = {**x, name: a.copy()}, {**x, name: a.copy()}
            up[name][idx] += h
            down[name][idx] -= h
            fd = (loss(**up).loss - loss(**down).loss) / (2 * h)
            assert res.grad[name][idx] == pytest.approx(fd, rel=1e-5, abs=1e-7), (name, idx)
    # The same inputs in MACs are another loss: the unit changes the number.
    macs = usdc.resource_loss(SPEC, **{k: v for k, v in x.items() if k != "gate_ms"},
                              gate_macs=x["gate_ms"] * 1e4, target=0.4)
    assert macs.unit == "MACs" and macs.ratio != pytest.approx(res.ratio)


def test_an_ms_loss_refuses_macs_gate_costs_other_shapes_and_reading_macs():
    table = uvc.LatencyTable(table_dict())
    rng = np.random.default_rng(2)
    heads, neurons, parts, rates, _ = random_static(rng)
    base = dict(head_probs=heads, neuron_probs=neurons, part_probs=parts, rates=rates, target=0.5)
    gates, probs = np.full((3, 1), 0.01), np.ones((3, 1))
    with pytest.raises(ValueError, match="gate_ms, not gate_macs"):
        usdc.resource_loss(SPEC, **base, gate_macs=gates, gate_probs=probs, latency=table)
    with pytest.raises(ValueError, match="gate_ms prices gate networks in a latency budget"):
        usdc.resource_loss(SPEC, **base, gate_ms=gates, gate_probs=probs)
    with pytest.raises(ValueError, match="gate_ms and gate_probs go together"):
        usdc.resource_loss(SPEC, **base, gate_ms=gates, latency=table)
    with pytest.raises(ValueError, match="gate_ms"):
        usdc.resource_loss(SPEC, **base, gate_ms=-gates, gate_probs=probs, latency=table)
    with pytest.raises(TypeError, match="latency must be a uvc.LatencyTable"):
        usdc.resource_loss(SPEC, **base, latency=table_dict())
    other = uvc.LatencyTable(table_dict(dataclasses.replace(SPEC, depth=2)))
    with pytest.raises(ValueError, match="another model shape|spec"):
        usdc.resource_loss(SPEC, **base, latency=other)
    res = usdc.resource_loss(SPEC, **base, latency=table)
    with pytest.raises(ValueError, match="priced in ms"):
        res.macs


def timm_vit(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **KW)


def images(n, seed=0):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def measured():
    """A table measured here for the tiny timm model, at batch 4, one thread."""
    return uvc.LatencyTable(profile(timm_vit(), batch_size=4, threads=1, repeats=3, warmup=1, progress=False,
                                    v_dims=[1, 4, 8], neurons=[1, 32, 64, 128]))


def test_gate_networks_are_timed_in_the_tables_units(measured):
    ms = gate_ms(measured, ("linear", "mlp_ln", "conv1d"), repeats=5, warmup=1)
    assert ms.shape == (3,) and np.all(np.isfinite(ms)) and np.all(ms > 0)
    # A token mean and one 32 x 2 product cost less than a convolution over every token.
    assert ms[0] < ms[2]
    with pytest.raises(ValueError, match="kinds"):
        gate_ms(measured, ("gru",))
    with pytest.raises(TypeError, match="LatencyTable"):
        gate_ms(table_dict())


def test_the_search_and_the_dynamic_model_budget_the_tables_ms(measured):
    model = timm_vit().train()
    search_ = USDCSearch(model, 0.5, neuron_group_size=16, static_mode="softmax", latency=measured, seed=1)
    assert search_.budget.unit == "ms" and search_.budget.gate_costs.shape == (3, 4)
    model(images(8))
    loss = search_.resource_loss()
    heads, neurons, parts = (t.detach().double().numpy() for t in search_.arch.keep_probs())
    rates = torch.stack(search_._rates).detach().double().numpy()
    gate_probs = torch.stack([g.probs() for g in search_.arch.gates]).detach().double().numpy()
    ref = usdc.resource_loss(search_.spec, head_probs=heads, neuron_probs=neurons, part_probs=parts, rates=rates,
                             gate_ms=search_.budget.gate_costs, gate_probs=gate_probs, target=0.5, latency=measured)
    assert loss.item() == pytest.approx(ref.loss, rel=1e-6)
    stats = search_.stats()
    assert stats["expected_ms"] == pytest.approx(ref.cost) and "expected_macs" not in stats
    loss.backward()
    assert search_.arch.head_logits.grad.abs().sum() > 0

    dyn = search_.export().eval()
    with torch.no_grad():
        dyn.gates[1].out.bias[0] = -1e3  # layer 1's MHSA never runs
        dyn.gates[1].out.bias[1] = 1e3
        for j in (0, 2):
            dyn.gates[j].out.bias.fill_(1e3)
        dyn.reset_stats()
        dyn(images(4))
    gates = np.full((3, 1), 0.002)
    res = dyn.average_latency(measured, gate_ms=gates)
    layers = list(dyn.plan.layers)
    layers[1] = dataclasses.replace(layers[1], heads=(), v_index=(), attn=False)
    skipped = uvc.ArchPlan(dyn.plan.spec, tuple(layers))
    live = sum(1 for l in dyn.plan.layers if l.attn or l.mlp)
    assert res["ms"] == pytest.approx(measured.predict(skipped) + 0.002 * live, rel=1e-12)
    assert res["static_ms"] == pytest.approx(measured.predict(dyn.plan) + 0.002 * live, rel=1e-12)
    assert res["ratio"] == pytest.approx(res["ms"] / measured.dense_ms)
    ft = USDCFinetune(dyn.train(), 0.5, latency=measured)
    assert ft.budget.unit == "ms" and ft.budget.gate_costs.shape == (3, 1)
    with pytest.raises(TypeError, match="latency"):
        USDCSearch(timm_vit(), 0.5, latency=table_dict())
    with pytest.raises(ValueError, match="latency table"):
        USDCSearch(timm_vit(), 0.5, latency=uvc.LatencyTable(table_dict(dataclasses.replace(SPEC, depth=2))))


def test_the_pipeline_spends_a_latency_target_and_says_whether_it_is_met(tmp_path, tiny_checkpoint):
    from uvc.torch.profile import save_table
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY)
    path = tmp_path / "latency.json"
    save_table(profile(model, batch_size=8, threads=1, repeats=3, warmup=1, progress=False), path)
    common = dict(model_kwargs=TINY, data="fashion-mnist", subset=128, eval_subset=64, train_batch_size=32,
                  learning_rate=1e-3, weight_decay=0.0, target=0.6, seed=3,
                  device="cpu", progress=False, latency_table=str(path))
    s1 = search(model="vit_tiny_patch16_224", checkpoint=tiny_checkpoint, num_epochs=1, output_dir=str(tmp_path / "s"),
                neuron_group_size=16, **common)
    table = uvc.LatencyTable.load(path)
    assert s1["latency_table"] == str(path) and s1["dense_predicted_ms"] == pytest.approx(table.dense_ms)
    assert s1["predicted_ms"] == pytest.approx(s1["plan_ratio"] * table.dense_ms)
    assert s1["budget_met"] == (s1["plan_ratio"] <= 0.6 * 1.01) and "expected_ms" in s1
    log = [json.loads(line) for line in (tmp_path / "s" / "stage1" / "log.jsonl").read_text().splitlines()]
    assert "expected_ms" in log[-1]
    s2 = finetune(model=str(tmp_path / "s" / "stage1_model"), teacher="vit_tiny_patch16_224",
                  teacher_checkpoint=tiny_checkpoint, epochs=1, output_dir=str(tmp_path / "f"), **common)
    assert s2["latency_table"] == str(path) and s2["budget_met"] == (s2["plan_ratio"] <= 0.6 * 1.01)
    other = tmp_path / "other.json"
    save_table(profile(timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY, "depth": 1}),
                       batch_size=8, threads=1, repeats=3, warmup=1, progress=False), other)
    with pytest.raises(ValueError, match="latency table"):
        search(model="vit_tiny_patch16_224", checkpoint=tiny_checkpoint, num_epochs=1,
               output_dir=str(tmp_path / "bad"), **{**common, "latency_table": str(other)})
