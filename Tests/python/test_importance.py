"""Pluggable group importance of the Compressor (`uvc.torch.importance`): every criterion against
its formula computed here by explicit loops over heads, value dims and neurons, the Taylor
moving average, gated MLPs, "proj" (the former default) reproducing the former scores, clear errors, and
exact resume of a "taylor" search."""
import copy

import pytest
import timm
import torch
from torch import nn

from uvc.settings import COMPRESS
from uvc.torch.compress import Compressor
from uvc.torch.importance import CRITERIA, Group, Importance, Proj, Taylor, make_importance

SMALL = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2, num_classes=5)


def small_vit(**over) -> nn.Module:
    """The small ViT with known weights: parameter k, element e holds sin(0.37·e + k)."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**SMALL, **over})
    with torch.no_grad():
        for k, p in enumerate(model.parameters()):
            p.copy_(torch.sin(torch.arange(p.numel(), dtype=torch.float64) * 0.37 + k).reshape(p.shape))
    return model


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 32, 32, generator=g), torch.randint(0, 5, (6,), generator=g)


def fc1_units(mlp) -> list[list[tuple[nn.Linear, int]]]:
    """Per hidden unit i, its fc1 (module, row) pairs, spelled out for each timm MLP kind."""
    units = mlp.fc2.in_features
    if hasattr(mlp, "fc1_g"):  # SwiGLU: gate and value rows in two Linears
        return [[(mlp.fc1_g, i), (mlp.fc1_x, i)] for i in range(units)]
    if mlp.fc1.out_features == 2 * units:  # GluMlp: the two halves of fc1
        return [[(mlp.fc1, i), (mlp.fc1, units + i)] for i in range(units)]
    return [[(mlp.fc1, i)] for i in range(units)]


def looped(model, f, column_only: bool = False):
    """Per block, Σ f(w, grad) over every weight of each value dim's and neuron's group, one
    element at a time in float64; ``column_only``: proj's / fc2's input column alone."""
    def val(t, *i):
        return float(t.detach()[i].double())

    def term(p, *i):
        return f(val(p, *i), val(p.grad, *i) if p.grad is not None else 0.0)

    dims, neurons = [], []
    for b in model.blocks:
        a, mlp = b.attn, b.mlp
        heads, hd, width = a.num_heads, a.head_dim, a.attn_dim
        row = []
        for h in range(heads):
            for j in range(hd):
                c = h * hd + j
                s = sum(term(a.proj.weight, o, c) for o in range(a.proj.out_features))
                if not column_only:
                    r = 2 * width + h * hd + j  # qkv rows: [q heads | k heads | v heads]
                    s += sum(term(a.qkv.weight, r, i) for i in range(a.qkv.in_features))
                    s += term(a.qkv.bias, r) if a.qkv.bias is not None else 0.0
                row.append(s)
        dims.append(row)
        row = []
        for i, pairs in enumerate(fc1_units(mlp)):
            s = sum(term(mlp.fc2.weight, o, i) for o in range(mlp.fc2.out_features))
            if not column_only:
                for fc1, r in pairs:
                    s += sum(term(fc1.weight, r, k) for k in range(fc1.in_features))
                    s += term(fc1.bias, r) if fc1.bias is not None else 0.0
            row.append(s)
        neurons.append(row)
    return torch.tensor(dims, dtype=torch.float64), torch.tensor(neurons, dtype=torch.float64)


def square(w, g):
    return w * w


def product(w, g):
    return w * g


def close(got, want, rtol=1e-5):
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * float(want.abs().max()))


def backward(model, seed: int = 0):
    model.zero_grad()
    x, y = batch(seed)
    nn.functional.cross_entropy(model(x), y).backward()


def test_the_names_are_the_settings_choices():
    assert CRITERIA == ("proj", "group", "taylor")
    assert COMPRESS["importance"].choices == CRITERIA and COMPRESS["importance"].default == "taylor"
    assert [type(make_importance(n)) for n in CRITERIA] == [Proj, Group, Taylor]


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_proj_and_group_equal_their_formulas(qkv_bias):
    model = small_vit(qkv_bias=qkv_bias)
    spec = (2, 2 * 8), (2, 32)
    dims, neurons = Proj().scores(model)
    assert (tuple(dims.shape), tuple(neurons.shape)) == spec
    want = looped(model, square, column_only=True)
    close(dims, want[0]), close(neurons, want[1])
    dims, neurons = Group().scores(model)
    want = looped(model, square)
    close(dims, want[0]), close(neurons, want[1])
    # The group holds more than the column: the qkv row (and fc1 row) add to every score.
    assert (dims > Proj().scores(model)[0]).all()


def test_proj_reproduces_the_former_compressor_scores():
    model = small_vit()
    with torch.no_grad():  # uneven columns, as after some proximal shrink
        model.blocks[1].attn.proj.weight[:, 3] *= 0.1
        model.blocks[0].mlp.fc2.weight[:, 7] = 0
    comp = Compressor(model, 0.5, steps_per_epoch=1, importance="proj")
    dims, neurons = comp.scores()
    # The scores() of before importance was pluggable, verbatim.
    proj = torch.stack([b.attn.proj.weight.float().pow(2).sum(0) for b in model.blocks])
    fc2 = torch.stack([b.mlp.fc2.weight.float().pow(2).sum(0) for b in model.blocks])
    assert torch.equal(dims, proj) and torch.equal(neurons, fc2)
    comp.importance.accumulate(model)  # stateless: a no-op
    assert torch.equal(comp.scores()[0], proj)


@pytest.mark.parametrize("mlp", ["SwiGLUPacked", "SwiGLU"])
def test_group_of_a_gated_mlp_counts_both_fc1_rows(mlp):
    layer = getattr(timm.layers, mlp)
    model = small_vit(mlp_layer=layer, act_layer=nn.SiLU, mlp_ratio=4 if mlp == "SwiGLUPacked" else 2)
    assert model.blocks[0].mlp.fc2.in_features == 32
    dims, neurons = Group().scores(model)
    want = looped(model, square)
    close(dims, want[0]), close(neurons, want[1])
    # And the Taylor term over the same rows.
    backward(model)
    t = Taylor()
    t.accumulate(model)
    want = looped(model, product)
    close(t.scores(model)[1], want[1].abs(), rtol=1e-4)


def test_taylor_is_the_group_norm_until_a_gradient_then_a_moving_average():
    model = small_vit()
    t = Taylor(decay=0.75)
    assert all(torch.equal(a, b) for a, b in zip(t.scores(model), Group().scores(model)))
    t.accumulate(model)  # no .grad yet: nothing seen
    assert t.state_dict()["average"] is None
    backward(model, 0)
    t.accumulate(model)
    first = [x.abs() for x in looped(model, product)]
    got = t.scores(model)
    close(got[0], first[0], rtol=1e-4), close(got[1], first[1], rtol=1e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    backward(model, 1)
    t.accumulate(model)
    second = [x.abs() for x in looped(model, product)]
    got = t.scores(model)
    for g, a, b in zip(got, first, second):
        close(g, 0.75 * a + 0.25 * b, rtol=1e-4)
    assert not torch.allclose(got[0].double(), second[0].double(), rtol=1e-3)


def test_taylor_state_round_trips_and_decay_is_checked():
    model = small_vit()
    t = Taylor()
    backward(model)
    t.accumulate(model)
    u = Taylor()
    u.load_state_dict(copy.deepcopy(t.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(u.scores(model), t.scores(model)))
    with pytest.raises(ValueError, match="'taylor' criterion, this run uses 'group'"):
        Group().load_state_dict(t.state_dict())
    with pytest.raises(ValueError, match="decay"):
        Taylor(decay=1.0)


def test_unknown_importance_is_refused_before_anything_is_hooked():
    model = small_vit()
    with pytest.raises(ValueError, match=r"importance must be one of proj, group, taylor .*got 'l1'"):
        Compressor(model, 0.5, steps_per_epoch=1, importance="l1")
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    with pytest.raises(TypeError, match="importance: .*object lacks scores, accumulate"):
        Compressor(model, 0.5, steps_per_epoch=1, importance=object())


def test_an_importance_object_is_used_as_given():
    class Ones(Importance):
        calls = 0

        def scores(self, model):
            return torch.ones(2, 16), torch.ones(2, 32)

        def accumulate(self, model):
            Ones.calls += 1

    model = small_vit()
    comp = Compressor(model, 0.5, steps_per_epoch=2, importance=Ones())
    comp.step(lr=0.0)
    assert Ones.calls == 1 and torch.equal(comp.scores()[0], torch.ones(2, 16))
    assert comp.state_dict()["importance"] == {"name": "custom"}


def search(model, comp, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        comp.step()


def test_a_taylor_search_resumes_exactly():
    def setup():
        model = small_vit()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        comp = Compressor(model, 0.4, steps_per_epoch=3, optimizer=opt, seed=7, warmup_epochs=0.0,
                          importance="taylor")
        return model, opt, comp

    batches = [batch(s) for s in range(10)]
    model, opt, comp = setup()
    search(model, opt=opt, comp=comp, batches=batches[:4])
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), comp.state_dict()))
    assert saved[2]["importance"]["average"] is not None
    search(model, opt=opt, comp=comp, batches=batches[4:])

    resumed, old = setup(), setup()
    for (m, o, c), state in ((resumed, saved[2]), (old, {k: v for k, v in saved[2].items() if k != "importance"})):
        m.load_state_dict(saved[0])
        o.load_state_dict(saved[1])
        c.load_state_dict(copy.deepcopy(state))  # a state without "importance" (older runs) loads too
        search(m, opt=o, comp=c, batches=batches[4:])
    m, _, c = resumed
    assert torch.equal(c._attn_mask, comp._attn_mask) and torch.equal(c._mlp_mask, comp._mlp_mask)
    assert c.state_dict() == comp.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), model.state_dict().values()))
    # Without the moving average the run differs: the state is what made it exact.
    assert old[2].state_dict()["importance"] != comp.state_dict()["importance"]
    assert not all(torch.equal(a, b) for a, b in zip(old[0].state_dict().values(), model.state_dict().values()))
