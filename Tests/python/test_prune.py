"""One-shot pruning with least-squares reconstruction: the numpy Gram / ridge API against numpy,
exact reconstruction when the removed units carry no signal, plans at their budget by the
cost model and the torch counter, and clear errors for bad calibration data."""
import numpy as np
import pytest
import timm
import torch

import uvc
from conftest import TINY
from uvc.reconstruct import gram, ridge_solve
from uvc.torch import count_macs, spec_from_model
from uvc.torch.oneshot import allocate, importance, prune, reconstruct
from uvc.torch.slim import SlimViT


def test_grams_over_batches_and_the_ridge_solve_match_numpy(rng):
    x, y = rng.standard_normal((300, 9)), rng.standard_normal((300, 4))
    xtx, xty = gram(x[:100], y[:100])
    gram(x[100:], y[100:], xtx, xty)
    np.testing.assert_allclose(xtx, x.T @ x, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(xty, x.T @ y, rtol=1e-12, atol=1e-10)
    a32, b32 = gram(x.astype(np.float32), y.astype(np.float32))
    np.testing.assert_allclose(a32, x.astype(np.float32).astype(np.float64).T @ x.astype(np.float32), rtol=1e-12)
    kept = np.array([0, 3, 4, 8])
    w, method = ridge_solve(xtx, xty, kept, ridge=1e-9, return_method=True)
    assert method == "cholesky"
    np.testing.assert_allclose(w, np.linalg.lstsq(x[:, kept], y, rcond=None)[0], rtol=1e-6, atol=1e-8)
    lam = 0.1 * np.diag(xtx)[kept].mean()
    ridge = np.linalg.solve(xtx[np.ix_(kept, kept)] + lam * np.eye(4), xty[kept])
    np.testing.assert_allclose(ridge_solve(xtx, xty, kept, ridge=0.1), ridge, rtol=1e-10)


def test_bad_arrays_are_refused_naming_them(rng):
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="x: must be finite"):
        gram(bad, y)
    with pytest.raises(ValueError, match="xtx: the sums overflow float64"):
        gram(np.full((3, 2), 1e200), np.ones((3, 1)))
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        gram(x.astype(np.int64), y)
    with pytest.raises(TypeError, match="same dtype"):
        gram(x.astype(np.float32), y)
    with pytest.raises(ValueError, match=r"y: expected shape \(5, outputs\)"):
        gram(x, y[:4])
    xtx, xty = gram(x, y)
    with pytest.raises(ValueError, match="kept: expected increasing column indices"):
        ridge_solve(xtx, xty, [2, 1])
    with pytest.raises(ValueError, match="ridge: must be finite"):
        ridge_solve(xtx, xty, [0], ridge=-1.0)
    with pytest.raises(ValueError, match=r"xty: expected shape \(3, outputs\)"):
        ridge_solve(xtx, xty[:2], [0])


def _model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY).eval()


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g))
            for _ in range(n // 32)]


def test_reconstruction_is_exact_when_the_removed_units_carry_no_signal():
    model = _model()
    spec = spec_from_model(model)
    dead = list(range(0, spec.mlp_hidden, 3))
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.fc1.weight[dead] = 0
            block.mlp.fc1.bias[dead] = 0  # GELU(0) = 0: these neurons put nothing into fc2
    keep = tuple(i for i in range(spec.mlp_hidden) if i not in dead)
    dense = uvc.ArchPlan.dense(spec)
    plan = uvc.ArchPlan(spec, tuple(uvc.LayerPlan(heads=l.heads, v_index=l.v_index, neurons=keep, tokens=l.tokens)
                                    for l in dense.layers))
    slim = SlimViT.from_timm(model, plan).eval()
    with torch.no_grad():  # spoil the kept weights: the fit must restore them
        for block in slim.blocks:
            block.mlp.fc2.weight.mul_(0.5)
            block.mlp.fc2.bias.add_(0.3)
            block.attn.proj.weight.mul_(1.5)
    report = reconstruct(slim, model, _images(), ridge=0.0, progress=False)["layers"]
    assert len(report) == 2 * spec.depth
    for r in report:
        assert r["rel_error_before"] > 1e-2 and r["rel_error_after"] < 1e-9, r
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
def test_pruned_models_meet_the_budget_by_the_cost_model_and_the_torch_counter(budget):
    model = _model()
    spec = spec_from_model(model)
    slim = prune(model, budget, _images(64), images=64, progress=False)
    report = slim.prune_report
    macs = uvc.count(spec, slim.plan).macs
    assert report["ratio"] == macs / uvc.count(spec).macs <= budget
    assert report["ratio"] > budget - 0.1, "the allocation spends the budget"
    x = torch.rand(1, 1, 28, 28)
    assert count_macs(slim, x)["macs"] == uvc.count(spec, slim.plan, convention="fvcore").macs
    assert all(r["rel_error_after"] <= r["rel_error_before"] + 1e-6 for r in report["layers"])
    # The errors come from the Gram matrices: they equal the layer's error measured directly.
    from uvc.torch.oneshot import _capture
    entry = report["layers"][-1]
    j = slim.block_index.index(entry["layer"])
    layer = slim.blocks[j].mlp.fc2 if entry["part"] == "mlp" else slim.blocks[j].attn.proj
    target = model.blocks[entry["layer"]].mlp.fc2 if entry["part"] == "mlp" else model.blocks[entry["layer"]].attn.proj
    error = total = 0.0
    with torch.no_grad():
        for x, _ in _images(64):
            a, y = _capture(slim, layer, x, output=False), _capture(model, target, x, output=True)
            error += (layer(a) - y).double().pow(2).sum().item()
            total += y.double().pow(2).sum().item()
    assert error / total == pytest.approx(entry["rel_error_after"], rel=1e-4, abs=1e-12)


def test_the_allocation_spends_the_price_where_the_scores_are():
    spec = spec_from_model(_model())
    scores = {"dims": np.ones((spec.depth, spec.num_heads, spec.v_head_dim)),
              "neurons": np.ones((spec.depth, spec.mlp_hidden))}
    scores["neurons"][0] *= 100  # layer 0's MLP matters most
    scores["dims"][1, 0] *= 1000  # so does head 0 of layer 1
    scores["heads"] = scores["dims"].sum(-1)
    plan = allocate(spec, scores, 0.5)
    assert uvc.count(spec, plan).macs <= 0.5 * uvc.count(spec).macs
    assert len(plan.layers[0].neurons) == spec.mlp_hidden
    assert 0 in plan.layers[1].heads


def test_the_allocation_fills_the_budget_the_price_jumps_leave(rng):
    """The price alone lands a part's size under the budget; the fill spends the rest, so no
    running MLP below full width can take one more neuron within the budget."""
    import dataclasses
    spec = spec_from_model(_model())
    dense = uvc.count(spec).macs
    for budget in (0.3, 0.45, 0.7):
        scores = {"dims": rng.gamma(0.5, size=(spec.depth, spec.num_heads, spec.v_head_dim)),
                  "neurons": rng.gamma(0.5, size=(spec.depth, spec.mlp_hidden))}
        scores["heads"] = scores["dims"].sum(-1)
        plan = allocate(spec, scores, budget)
        macs = uvc.count(spec, plan).macs
        assert macs <= budget * dense
        open_mlps = [l for l, layer in enumerate(plan.layers) if 0 < len(layer.neurons) < spec.mlp_hidden]
        assert open_mlps, "the test needs a layer whose MLP can still grow"
        for l in open_mlps:
            layer = plan.layers[l]
            extra = min(set(range(spec.mlp_hidden)) - set(layer.neurons))
            wider = dataclasses.replace(layer, neurons=tuple(sorted((*layer.neurons, extra))))
            grown = uvc.ArchPlan(spec, tuple(wider if i == l else x for i, x in enumerate(plan.layers)))
            assert uvc.count(spec, grown).macs > budget * dense, (budget, l)


def test_bad_calibration_data_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="yielded no images"):
        prune(model, 0.5, [], progress=False)
    with pytest.raises(TypeError, match="batches of images"):
        prune(model, 0.5, [torch.zeros(4, 28, 28)], progress=False)
    with pytest.raises(ValueError, match=r"give at least \d+ images"):
        prune(model, 0.9, _images(32)[:1], images=1, progress=False)
    with pytest.raises(ValueError, match="needs labels"):
        prune(model, 0.5, [x for x, _ in _images(32)], criterion="taylor", progress=False)
    nan = torch.full((32, 1, 28, 28), float("nan"))
    with pytest.raises(ValueError, match="calibration: batch 0 holds NaN"):
        prune(model, 0.5, [nan], progress=False)
    with pytest.raises(ValueError, match="budget"):
        prune(model, 1.5, _images(32), progress=False)
    scores = importance(model, None, "magnitude")
    assert scores["dims"].shape == (3, 4, 8) and np.all(scores["neurons"] >= 0)


def test_uvc_prune_and_compress_reconstruct_from_the_command_line(tmp_path, tiny_checkpoint):
    import json

    from uvc.cli import main
    from uvc.torch import load
    common = ["--model", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(TINY), "--checkpoint", tiny_checkpoint,
              "--eval-subset", "100", "--device", "cpu", "--no-progress"]
    assert main(["prune", *common, "--budget", "0.5", "--calibration", "64", "--output-dir", str(tmp_path / "p")]) == 0
    summary = json.loads((tmp_path / "p" / "summary_prune.json").read_text())
    assert summary["budget_met"] and summary["ratio"] <= 0.5 and len(summary["layers"]) > 0
    assert load(tmp_path / "p" / "model").plan == uvc.ArchPlan.load(tmp_path / "p" / "plan.json")
    assert main(["compress", *common, "--subset", "128", "--batch-size", "64", "--num_epochs", "1",
                 "--warmup_epochs", "0.5", "--reconstruct", "--calibration", "64", "--output_dir",
                 str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "settings.json").read_text())["reconstruct"] is True
    assert (tmp_path / "c" / "stage1_model" / "arch.json").is_file()
