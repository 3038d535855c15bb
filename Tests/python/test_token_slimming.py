"""Token slimming that counts: a block drops tokens after its MHSA (top-k by class attention, or
without a class token by the attention each token receives; the rest fused into one token). The
cost model equals fvcore and `count_macs` on slim models with token schedules; the slim model equals an independent per-image reference; prefix tokens survive; save,
load and ONNX keep the schedule; bad schedules are refused naming the plan and the layer. Learned
schedules: the `Compressor` drops tokens in training as the export does, its masked model's logits
equal the exported model's, gradients reach the dropped tokens through the fused one."""
import dataclasses
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import uvc
from uvc.torch import SlimViT, count_macs, export_onnx, fvcore_macs, load, save, spec_from_model
from uvc.torch.compress import Compressor
from uvc.torch.data import make_loader
from uvc.torch.slim import SlimBlock, reduce_tokens
from test_torch_counts import masked_dense, small_timm


def drops(plan):
    return [l for l in range(plan.spec.depth - 1) if plan.layers[l + 1].tokens < plan.layers[l].tokens]


def token_plans(spec, rng, n):
    """``n`` random plans of ``spec`` that each drop tokens at least once."""
    plans = []
    while len(plans) < n:
        plan = uvc.random_plan(spec, rng, drop_prob=0.7, qk=True)
        if drops(plan):
            plans.append(plan)
    return plans


def test_random_token_plans_count_exactly(rng):
    cases = []
    for config in ("plain", "distilled_ls_head_dim5", "registers_ls_no_qkv_bias", "avg_registers_no_class"):
        model = small_timm(config, seed=3)
        spec = spec_from_model(model)
        cases += [(spec, SlimViT.from_timm(model, plan)) for plan in token_plans(spec, rng, 8)]
    for distilled in (False, True):
        # Value width other than the qk width: SlimViT alone, fresh weights.
        spec = uvc.ViTSpec(depth=4, embed_dim=20, num_heads=3, qk_head_dim=6, v_head_dim=4, mlp_hidden=40,
                           patch_size=4, image_size=16, in_channels=2, prefix_tokens=2 if distilled else 1,
                           classifier_heads=2 if distilled else 1, num_classes=6)
        cases += [(spec, SlimViT(spec, plan)) for plan in token_plans(spec, rng, 4)]
    assert len(cases) == 40
    for spec, slim in cases:
        x = torch.randn(1, spec.in_channels, *spec.image_size)
        report = uvc.count(spec, slim.plan, convention="fvcore")
        assert fvcore_macs(slim, x) == report.macs
        assert count_macs(slim, x)["macs"] == report.macs
        dropping = drops(slim.plan)
        assert [l for l in range(spec.depth) if report.layers[l, uvc.cost.LAYER_COMPONENTS.index('fuse')] > 0] == dropping
        reducing = [i for i, b in zip(slim.block_index, slim.blocks) if b.tokens_out is not None]
        assert reducing == dropping


def ranking_attention_of_kept_heads(blk, layer, h, class_token):
    """(B, N) of a timm block, averaged over the kept heads: softmax(q_cls · Kᵀ / √d), or without a
    class token the attention each token receives, query by query then averaged over the queries."""
    hd, attn_dim = blk.attn.head_dim, blk.attn.attn_dim
    qkv = blk.attn.qkv(h)
    rows = []
    for head in layer.heads:
        k = qkv[:, :, attn_dim + head * hd:attn_dim + (head + 1) * hd]
        queries = [0] if class_token else range(qkv.shape[1])
        received = [torch.softmax(torch.einsum("bd,bnd->bn", qkv[:, i, head * hd:(head + 1) * hd], k) * hd ** -0.5,
                                  dim=-1) for i in queries]
        rows.append(sum(received) / len(received))
    return torch.stack(rows).mean(dim=0)


def reference_logits(model, plan, x):
    """The masked dense timm model, dropping tokens image by image with Python's sort."""
    dense = masked_dense(model, plan)
    prefix, depth = plan.spec.prefix_tokens, plan.spec.depth
    t = dense._pos_embed(dense.patch_embed(x))
    for l, (blk, layer) in enumerate(zip(dense.blocks, plan.layers)):
        h = blk.norm1(t)
        t = t + blk.ls1(blk.attn(h))
        after = plan.layers[l + 1].tokens if l + 1 < depth else layer.tokens
        if after < layer.tokens:
            scores = ranking_attention_of_kept_heads(blk, layer, h, plan.spec.class_token)
            out = []
            for b in range(t.shape[0]):
                s = scores[b, prefix:].tolist()
                order = sorted(range(len(s)), key=lambda i: -s[i])
                keep, rest = order[:after - prefix - 1], order[after - prefix - 1:]
                total = sum(s[i] for i in rest)
                fused = sum(s[i] / total * t[b, prefix + i] for i in rest)
                out.append(torch.cat([t[b, :prefix], t[b, [prefix + i for i in keep]], fused[None]]))
            t = torch.stack(out)
        t = t + blk.ls2(blk.mlp(blk.norm2(t)))
    return dense.forward_head(dense.norm(t))


@pytest.mark.parametrize("config", ["plain", "distilled_ls_head_dim5", "registers_ls_no_qkv_bias",
                                    "avg_registers_no_class"])
def test_slim_token_drop_equals_per_image_reference(config, rng):
    # Double precision: near-ties in the ranking cannot flip between the two computations.
    model = small_timm(config, seed=7).double()
    spec = spec_from_model(model)
    x = torch.randn(3, spec.in_channels, *spec.image_size, dtype=torch.float64)
    for plan in token_plans(spec, rng, 3):
        with torch.no_grad():
            expected = reference_logits(model, plan, x)
            for fused in (True, False):
                slim = SlimViT.from_timm(model, plan, fused_attn=fused)
                torch.testing.assert_close(slim(x), expected, atol=1e-10, rtol=1e-10)


def test_prefix_tokens_survive_in_place():
    model = small_timm("distilled_ls_head_dim5", seed=1)
    spec = spec_from_model(model)
    dense = uvc.ArchPlan.dense(spec)
    # Block 0 drops 11 -> 4 tokens: class, distillation, one kept patch, the fused token.
    plan = uvc.ArchPlan(spec, (dense.layers[0],) + tuple(dataclasses.replace(l, tokens=4) for l in dense.layers[1:]))
    slim = SlimViT.from_timm(model, plan)
    blk = slim.blocks[0]
    assert blk.tokens_out == 4 and blk.prefix_tokens == 2 and slim.blocks[1].tokens_out is None
    seen = {}
    blk.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    with torch.no_grad():
        slim(torch.randn(2, 1, 12, 12))
        x, out = seen["x"], seen["out"]
        assert x.shape == (2, 11, 24) and out.shape == (2, 4, 24)
        # Tokens 0 and 1 went through the block like in a block that drops nothing.
        mid = (x + blk.ls1(blk.attn(blk.norm1(x))))[:, :2]
        torch.testing.assert_close(out[:, :2], mid + blk.ls2(blk.mlp(blk.norm2(mid))), atol=1e-6, rtol=1e-6)

    # Prefix tokens stay even when the class token attends to them least.
    x = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    scores = torch.tensor([[0.0, 0.0, 0.3, 0.1, 0.2, 0.25, 0.15]] * 2)
    out = reduce_tokens(x, scores, prefix_tokens=2, tokens_out=5)
    assert torch.equal(out[:, :2], x[:, :2])
    assert torch.equal(out[:, 2:4], x[:, [2, 5]])  # the two highest, highest first


def test_fused_token_is_the_attention_weighted_mean_of_the_dropped():
    x = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [3.0, -1.0], [4.0, 2.0], [5.0, 0.5], [6.0, 3.0]]])
    scores = torch.tensor([[0.28, 0.25, 0.05, 0.20, 0.10, 0.12]])
    out = reduce_tokens(x, scores, prefix_tokens=1, tokens_out=4)
    # Kept: token 1 (0.25) and token 3 (0.20); fused: tokens 5, 4, 2 with weights 12, 10, 5 (/ 27).
    fused = (0.12 * x[0, 5] + 0.10 * x[0, 4] + 0.05 * x[0, 2]) / 0.27
    torch.testing.assert_close(out[0], torch.stack([x[0, 0], x[0, 1], x[0, 3], fused]))
    # The weighted sum is a batched matmul the counters see: (N - N' + 1) * D = 3 * 2 MACs per image.
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        reduce_tokens(x.expand(4, -1, -1), scores.expand(4, -1), prefix_tokens=1, tokens_out=4)
    assert counter.get_total_flops() == 2 * 4 * 3 * 2


def test_save_load_and_onnx_keep_the_schedule(tmp_path, rng):
    model = small_timm("distilled_ls_head_dim5", seed=2)
    spec = spec_from_model(model)
    plan = token_plans(spec, rng, 1)[0]
    slim = SlimViT.from_timm(model, plan)
    x = torch.randn(4, 1, 12, 12)
    save(slim, tmp_path / "m")
    assert [l["tokens"] for l in json.loads((tmp_path / "m" / "arch.json").read_text())["plan"]["layers"]] \
        == [l.tokens for l in plan.layers]
    loaded = load(tmp_path / "m")
    assert loaded.plan == plan
    assert [b.tokens_out for b in loaded.blocks] == [b.tokens_out for b in slim.blocks]
    with torch.no_grad():
        reference = slim(x)
        assert torch.equal(loaded(x), reference)
    path = export_onnx(slim, tmp_path / "m.onnx")  # traced at batch 1, run at batch 4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"images": x.numpy()})[0], reference.numpy(),
                               atol=1e-4, rtol=1e-4)


def test_invalid_token_schedules_name_the_plan_and_layer(tmp_path):
    spec = uvc.ViTSpec(depth=3, embed_dim=16, num_heads=2, mlp_hidden=32, patch_size=4, image_size=16)
    dense = uvc.ArchPlan.dense(spec)
    assert spec.num_tokens == 17

    def plan(tokens, attn=(True, True, True)):
        layers = tuple(dataclasses.replace(l, tokens=t, attn=a, heads=l.heads if a else (),
                                           v_index=l.v_index if a else (), qk_index=l.qk_index if a else ())
                       for l, t, a in zip(dense.layers, tokens, attn))
        return uvc.ArchPlan(spec, layers)

    assert drops(plan((17, 10, 3))) == [0, 1]  # down to one kept patch plus the fused token
    with pytest.raises(ValueError, match=r"ArchPlan: plan: layer 0 takes 16 tokens, expected all 17"):
        plan((16, 16, 16))
    with pytest.raises(ValueError, match=r"ArchPlan: plan: layer 2 takes 12 tokens, more than the 10 of layer 1"):
        plan((17, 10, 12))
    with pytest.raises(ValueError, match=r"ArchPlan: plan: layer 1 drops tokens \(17 -> 9\) with its attention off"):
        plan((17, 17, 9), attn=(True, False, True))
    with pytest.raises(ValueError, match=r"ArchPlan: plan: layer 0 drops tokens to 2, expected at least 3"):
        plan((17, 2, 2))
    # The same refusal when a saved model's arch.json carries a bad schedule.
    good = plan((17, 10, 10))
    save(SlimViT(spec, good), tmp_path / "m")
    arch = json.loads((tmp_path / "m" / "arch.json").read_text())
    arch["plan"]["layers"][2]["tokens"] = 11
    (tmp_path / "m" / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(ValueError, match=r"is malformed: ArchPlan: plan: layer 2 takes 11 tokens, more than the 10"):
        load(tmp_path / "m")


def test_reduce_tokens_argument_errors():
    x, scores = torch.zeros(2, 6, 4), torch.full((2, 6), 1 / 6)
    with pytest.raises(ValueError, match=r"reduce_tokens: tokens_out must lie in 3\.\.5 .* got 6"):
        reduce_tokens(x, scores, 1, 6)
    with pytest.raises(ValueError, match=r"reduce_tokens: tokens_out must lie in 4\.\.5 .* got 3"):
        reduce_tokens(x, scores, 2, 3)
    with pytest.raises(TypeError, match="reduce_tokens: tokens_out must be an int, got float"):
        reduce_tokens(x, scores, 1, 4.0)
    with pytest.raises(ValueError, match=r"reduce_tokens: attention must have shape \(2, 6\), got \(2, 5\)"):
        reduce_tokens(x, scores[:, :5], 1, 4)
    with pytest.raises(ValueError, match=r"reduce_tokens: x must have shape \(batch, tokens, dim\)"):
        reduce_tokens(x[0], scores, 1, 4)
    with pytest.raises(ValueError, match="SlimBlock: tokens_out needs the MHSA part"):
        SlimBlock(4, num_heads=0, qk_dim=2, v_dim=2, mlp_hidden=8, tokens_out=3)


# Learned token schedules: the Compressor with prune_tokens on a tiny ViT and real Fashion-MNIST images.

TINY4 = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=3, num_heads=4)


@pytest.fixture(scope="module", params=[{}, dict(qk_norm=True, global_pool="avg", fc_norm=True),
                                        dict(class_token=False, reg_tokens=2, global_pool="avg")],
                ids=["plain", "qk_norm_avg_fc_norm", "registers_no_class_token"])
def token_search(request):
    """A tiny timm ViT (50 tokens) after 4 epochs of search with tokens, heads, dims, neurons and
    block gates under one budget, and the output shapes of each block in its last training step;
    plain, with qk_norm (the class attention reads normalised queries and keys) and average
    pooling with fc_norm, and with register tokens but no class token (ranked by the attention
    each token receives)."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY4, **request.param)
    loader = make_loader("fashion-mnist", "train", 64, subset=640, seed=0, image_size=(28, 28), in_chans=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    comp = Compressor(model, 0.5, steps_per_epoch=len(loader), optimizer=opt, seed=0, prune_tokens=True,
                      warmup_epochs=0.2)
    shapes = {}
    for l, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda m, a, out, l=l: shapes.update({l: (m.training, out.shape[1])}))
    for epoch in range(4):
        for x, y in loader.batches(epoch):
            keep = comp.solver.token_keep().tolist()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            comp.step()
    return model, comp, keep, shapes


def test_compressor_drops_tokens_in_training_and_the_export_matches(token_search):
    model, comp, keep, shapes = token_search
    spec = comp.spec
    # The last training forward ran the schedule the solver held then: block l output keep[l + 1] tokens.
    assert all(shapes[l] == (True, n) for l, n in enumerate(keep[1:] + keep[-1:]))
    plan = comp.solver.plan()
    tokens = [l.tokens for l in plan.layers]
    assert tokens == comp.solver.token_keep().tolist() and tokens[0] == spec.num_tokens
    assert tokens[-1] < spec.num_tokens, "the search dropped tokens"
    model.eval()
    slim = comp.export()
    dropping = [l for l in range(spec.depth - 1) if tokens[l + 1] < tokens[l]]
    assert [i for i, b in zip(slim.block_index, slim.blocks) if b.tokens_out is not None] == dropping
    x, _ = next(make_loader("fashion-mnist", "test", 200, subset=200, image_size=(28, 28), in_chans=1).batches(0))
    with torch.no_grad():
        masked, exported = model(x), slim(x)
    torch.testing.assert_close(exported, masked, atol=1e-4, rtol=0)
    assert all(shapes[l] == (False, n) for l, n in enumerate(tokens[1:] + tokens[-1:]))
    # The counted MACs of the exported model are the cost model's, whose plan cost the solver reports.
    assert count_macs(slim, x[:1])["macs"] == uvc.count(spec, plan, convention="fvcore").macs
    assert uvc.count(spec, plan).macs == round(comp.solver.stats()["plan_macs"])


def test_gradients_reach_the_dropped_tokens_through_the_fused_one(token_search):
    model, comp, _, _ = token_search
    model.train()
    keep = comp.solver.token_keep().tolist()
    l = next(l for l in range(len(keep) - 1) if keep[l + 1] < keep[l])
    seen = {}

    def grab(module, args):
        args[0].retain_grad()
        seen["x"] = args[0]
    handle = model.blocks[l].register_forward_pre_hook(grab)
    x, y = next(make_loader("fashion-mnist", "train", 16, subset=16, image_size=(28, 28), in_chans=1).batches(0))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    handle.remove()
    model.zero_grad(set_to_none=True)
    grad = seen["x"].grad
    assert grad.shape[1] == keep[l] > keep[l + 1]
    # Every token entering the dropping block, kept or fused, receives a gradient.
    assert (grad.abs().sum(-1) > 0).all()
