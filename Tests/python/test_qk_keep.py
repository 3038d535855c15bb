"""Narrower queries and keys in the search (``qk_keep``): priced from the first step, masked in
training, exported exactly, resumed exactly, refused where they cannot hold."""
import copy

import numpy as np
import pytest
import torch

import uvc
from uvc.torch import count_macs
from uvc.torch.compress import Compressor
from uvc.torch.data import make_loader

TINY = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=3, num_heads=4)


def tiny(**kw):
    import timm
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY, **kw)


def qk_norm_products(model):
    """|q row j|·|k row j| (weights and bias) per block, head and dim, as the Compressor ranks them."""
    out = []
    for blk in model.blocks:
        w = torch.cat([blk.attn.qkv.weight, blk.attn.qkv.bias[:, None]], dim=1).detach()
        q, k = w[:32].norm(dim=1), w[32:64].norm(dim=1)
        out.append((q * k).reshape(4, 8).numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def search():
    """Two epochs of search at 0.4 of the MACs keeping half of every head's q/k dims, tokens pruned
    too (the ranking attention reads the masked queries)."""
    model = tiny()
    start = qk_norm_products(model)
    loader = make_loader("fashion-mnist", "train", 64, subset=640, seed=0, image_size=(28, 28), in_chans=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    comp = Compressor(model, 0.4, steps_per_epoch=len(loader), optimizer=opt, seed=0, qk_keep=0.5,
                      warmup_epochs=0.2, prune_tokens=True)
    for epoch in range(2):
        for x, y in loader.batches(epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            comp.step()
    return model, comp, start


def test_the_search_keeps_the_strongest_query_key_dims_and_the_export_matches(search):
    model, comp, start = search
    spec = comp.spec
    assert comp.qk_dim == 4
    plan = comp.solver.plan(qk_scores=comp._qk_scores)
    for l, layer in enumerate(plan.layers):
        if layer.attn:
            # The dims of highest |q|·|k| on the weights the search started from, per kept head.
            assert layer.qk_index == tuple(tuple(sorted(np.argsort(-start[l, h], kind="stable")[:4].tolist()))
                                           for h in layer.heads)
    # The relaxed cost priced q/k at 4 dims from the start: the plan's MACs are the cost model's.
    assert uvc.count(spec, plan).macs == round(comp.solver.stats()["plan_macs"])
    model.eval()
    slim = comp.export()
    assert all(b.attn.qk_dim == 4 and b.attn.scale == 8 ** -0.5 for b in slim.blocks if b.attn is not None)
    x, _ = next(make_loader("fashion-mnist", "test", 200, subset=200, image_size=(28, 28), in_chans=1).batches(0))
    with torch.no_grad():
        torch.testing.assert_close(slim(x), model(x), atol=1e-4, rtol=0)
    assert count_macs(slim, x[:1])["macs"] == uvc.count(spec, slim.plan, convention="fvcore").macs
    full = uvc.ArchPlan(spec, tuple(l.__class__(**{**l.__dict__, "qk_index": None}) for l in slim.plan.layers))
    assert uvc.count(spec, slim.plan).macs < uvc.count(spec, full).macs


def test_a_resumed_compressor_keeps_the_dims_it_started_with(search):
    model, comp, _ = search
    state = copy.deepcopy(comp.state_dict())
    other = copy.deepcopy(model)
    resumed = Compressor(other, 0.4, steps_per_epoch=comp.steps_per_epoch, seed=0, qk_keep=0.5,
                         warmup_epochs=0.2, prune_tokens=True)
    assert not np.array_equal(resumed._qk_scores, comp._qk_scores), "the trained weights rank differently"
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(resumed._q_mask.numpy(), comp._q_mask.numpy())
    keep_all = Compressor(copy.deepcopy(model), 0.4, steps_per_epoch=1, seed=0)
    with pytest.raises(ValueError, match="qk_keep"):
        resumed.load_state_dict(keep_all.state_dict())


def test_qk_keep_is_refused_where_it_cannot_hold():
    with pytest.raises(ValueError, match=r"qk_keep: must be a fraction of each head's query/key dims in \(0, 1\]"):
        Compressor(tiny(), 0.5, steps_per_epoch=1, qk_keep=1.5)
    with pytest.raises(ValueError, match="qk_norm"):
        Compressor(tiny(qk_norm=True), 0.5, steps_per_epoch=1, qk_keep=0.5)
    assert Compressor(tiny(qk_norm=True), 0.5, steps_per_epoch=1, qk_keep=0.99).qk_dim == 8, "0.99 of 8 is all 8"
