"""Counting on real torch modules: fvcore, `count_macs` and the cost model agree exactly, for dense
timm DeiTs and for slim models of random plans; slim logits equal the masked dense model's;
reading specs from timm models and refusing what cannot be counted."""
import copy

import numpy as np
import pytest
import timm
import torch
from timm.layers import Attention
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import uvc
from uvc.torch import SlimViT, UnsupportedModelError, blocks, count_macs, fvcore_macs, spec_from_model

# REFERENCE.md §8: fvcore on timm with fused attention off, GMACs at 224x224, batch 1.
FVCORE_GMACS = {"deit_tiny_patch16_224": 1.2584, "deit_small_patch16_224": 4.6083, "deit_base_patch16_224": 17.5827,
                "deit_tiny_distilled_patch16_224": None}


def timm_deit(name):
    # Counting needs shapes, not values: skipping the weight init keeps DeiT-Base cheap to build.
    return timm.create_model(name, pretrained=False, weight_init="skip").eval()


def fused_flags(model):
    return [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]


@pytest.mark.parametrize("name", sorted(FVCORE_GMACS))
def test_dense_deit_fvcore_equals_cost_model_and_reference(name):
    model = timm_deit(name)
    spec = spec_from_model(model)
    assert spec == uvc.ViTSpec.from_name(name)
    flags = fused_flags(model)
    macs = fvcore_macs(model, torch.zeros(1, 3, 224, 224))
    assert fused_flags(model) == flags  # fvcore_macs turned fused attention off and back
    assert macs == uvc.count(spec, convention="fvcore").macs
    if FVCORE_GMACS[name] is not None:
        assert macs / 1e9 == pytest.approx(FVCORE_GMACS[name], rel=1e-4)


def test_count_macs_on_timm_deit_tiny():
    from torch.utils.flop_counter import FlopCounterMode
    model = timm_deit("deit_tiny_patch16_224")
    report = uvc.count(spec_from_model(model), convention="fvcore")
    x = torch.zeros(1, 3, 224, 224)
    flags = fused_flags(model)
    counted = count_macs(model, x)  # with fused attention off, like fvcore; timm's fused flags restored
    assert all(flags) and fused_flags(model) == flags
    assert counted["macs"] == report.macs and counted["flops"] == 2 * counted["macs"]
    norms = report.layers[:, [6, 7]].sum() + report.globals[1]  # norm1, norm2, final norm
    assert counted["by_op"]["aten.native_layer_norm"] == norms
    assert "aten.bmm" in counted["by_op"] and not any("attention" in op for op in counted["by_op"])
    # REFERENCE.md §8: FlopCounterMode alone (no LayerNorm) on timm's fused SDPA reports 2.5074 GFLOPs.
    with FlopCounterMode(display=False) as raw, torch.no_grad():
        model(x)
    assert raw.get_total_flops() == counted["flops"] - 2 * norms
    assert raw.get_total_flops() / 1e9 == pytest.approx(2.5074, rel=1e-4)


# Small timm ViTs: depths, widths, heads, a head width other than embed_dim / num_heads,
# distilled or not, LayerScale on and off, register tokens, no qkv / proj bias, tanh GELU.
CONFIGS = {
    "plain": dict(cls=VisionTransformer, img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4,
                  num_classes=5),
    "distilled_ls_head_dim5": dict(cls=VisionTransformerDistilled, img_size=12, patch_size=4, in_chans=1,
                                   embed_dim=24, depth=2, num_heads=3, head_dim=5, init_values=0.5,
                                   num_classes=7),
    "registers_ls_no_qkv_bias": dict(cls=VisionTransformer, img_size=16, patch_size=8, embed_dim=18, depth=4,
                                     num_heads=2, mlp_ratio=2.0, qkv_bias=False, reg_tokens=2,
                                     no_embed_class=True, init_values=0.3, act_layer="gelu_tanh", num_classes=4),
    "one_head_no_proj_bias": dict(cls=VisionTransformer, img_size=8, patch_size=2, in_chans=2, embed_dim=16,
                                  depth=5, num_heads=1, proj_bias=False, num_classes=3),
    # CLIP's layout: a LayerNorm on the tokens before the first block.
    "pre_norm": dict(cls=VisionTransformer, img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=3,
                     pre_norm=True, num_classes=6),
    # No class token: average pooling over the patches, register tokens in front.
    "avg_registers_no_class": dict(cls=VisionTransformer, img_size=16, patch_size=4, embed_dim=24, depth=3,
                                   num_heads=3, class_token=False, reg_tokens=2, global_pool="avg", num_classes=5),
}


def small_timm(config, seed):
    cfg = dict(CONFIGS[config])
    cls, head_dim = cfg.pop("cls"), cfg.pop("head_dim", None)
    torch.manual_seed(seed)
    model = cls(**cfg).eval()
    if head_dim is not None:
        # timm's Block has no head_dim argument; its Attention does (attn_dim = heads * head_dim).
        for blk in model.blocks:
            blk.attn = Attention(cfg["embed_dim"], cfg["num_heads"], attn_head_dim=head_dim,
                                 qkv_bias=cfg.get("qkv_bias", True))
    with torch.no_grad():
        # Large random weights: peaked attention and non-trivial LayerScale, so any wrong
        # head / dim / neuron slice changes the logits.
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def masked_dense(model, plan):
    """The dense timm model with removed heads' / value dims' proj columns, removed query dims'
    q rows (so q_j·k_j adds nothing to the logits) and removed neurons' fc2 columns zeroed, and
    skipped parts' output layers zeroed entirely (x + 0)."""
    dense = copy.deepcopy(model)
    with torch.no_grad():
        for blk, layer in zip(dense.blocks, plan.layers):
            hd = blk.attn.head_dim
            keep = torch.zeros(blk.attn.attn_dim, dtype=torch.bool)
            if layer.attn:
                queries = torch.zeros(blk.attn.attn_dim, dtype=torch.bool)
                for h, dims in zip(layer.heads, layer.qk_index):
                    queries[[h * hd + i for i in dims]] = True
                blk.attn.qkv.weight[:blk.attn.attn_dim][~queries] = 0
                if blk.attn.qkv.bias is not None:
                    blk.attn.qkv.bias[:blk.attn.attn_dim][~queries] = 0
                for h, dims in zip(layer.heads, layer.v_index):
                    keep[[h * hd + i for i in dims]] = True
            elif blk.attn.proj.bias is not None:
                blk.attn.proj.bias.zero_()
            blk.attn.proj.weight[:, ~keep] = 0
            keep = torch.zeros(blk.mlp.fc1.out_features, dtype=torch.bool)
            if layer.mlp:
                keep[list(layer.neurons)] = True
            elif blk.mlp.fc2.bias is not None:
                blk.mlp.fc2.bias.zero_()
            blk.mlp.fc2.weight[:, ~keep] = 0
    return dense


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_random_plans_counts_and_logits(config):
    model = small_timm(config, seed=len(config))
    spec = spec_from_model(model)
    rng = np.random.default_rng(len(config))
    x = torch.randn(2, spec.in_channels, *spec.image_size, generator=torch.Generator().manual_seed(0))
    for _ in range(13):  # 5 configs x 13 = 65 plans
        plan = uvc.random_plan(spec, rng, tokens=False, qk=True)
        slim = SlimViT.from_timm(model, plan)
        expected = uvc.count(spec, plan, convention="fvcore").macs
        assert fvcore_macs(slim, x[:1]) == expected
        assert count_macs(slim, x[:1])["macs"] == expected
        kept = [i for i, l in enumerate(plan.layers) if l.attn or l.mlp]
        assert slim.block_index == tuple(kept) and len(slim.blocks) == len(kept)
        for blk, i in zip(slim.blocks, kept):
            layer = plan.layers[i]
            assert (blk.attn is None) == (not layer.attn) and (blk.mlp is None) == (not layer.mlp)
            if layer.attn:
                assert blk.attn.proj.in_features == len(layer.heads) * layer.v_dim
            if layer.mlp:
                assert blk.mlp.fc1.out_features == len(layer.neurons)
        with torch.no_grad():
            torch.testing.assert_close(slim(x), masked_dense(model, plan)(x), atol=1e-5, rtol=1e-5)


def test_slim_counts_with_value_width_other_than_qk_width(rng):
    # Specs timm cannot build (v width != qk width): SlimViT alone, fresh weights.
    for _ in range(8):
        heads, distilled = int(rng.integers(1, 5)), bool(rng.integers(0, 2))
        spec = uvc.ViTSpec(depth=int(rng.integers(1, 4)), embed_dim=int(rng.integers(8, 33)), num_heads=heads,
                           qk_head_dim=int(rng.integers(2, 9)), v_head_dim=int(rng.integers(2, 9)),
                           mlp_hidden=int(rng.integers(4, 65)), patch_size=4, image_size=12,
                           in_channels=int(rng.integers(1, 4)), prefix_tokens=2 if distilled else 1,
                           classifier_heads=2 if distilled else 1, num_classes=int(rng.integers(2, 9)))
        plan = uvc.random_plan(spec, rng, tokens=False, qk=True)
        slim = SlimViT(spec, plan, init_values=0.5 if distilled else None).eval()
        x = torch.randn(1, spec.in_channels, 12, 12)
        expected = uvc.count(spec, plan, convention="fvcore").macs
        assert fvcore_macs(slim, x) == expected == count_macs(slim, x)["macs"]
        with torch.no_grad():
            fused = slim(x)
            for blk in slim.blocks:
                if blk.attn is not None:
                    blk.attn.fused_attn = False
            torch.testing.assert_close(slim(x), fused, atol=1e-5, rtol=1e-5)


def test_spec_from_model_reads_timm_variants():
    model = small_timm("distilled_ls_head_dim5", seed=0)
    spec = uvc.torch.spec_from_model(model)
    assert (spec.qk_head_dim, spec.v_head_dim, spec.num_heads, spec.embed_dim) == (5, 5, 3, 24)
    assert (spec.prefix_tokens, spec.classifier_heads, spec.num_classes, spec.in_channels) == (2, 2, 7, 1)
    spec = spec_from_model(small_timm("registers_ls_no_qkv_bias", seed=0))
    assert spec.prefix_tokens == 3 and spec.num_tokens == 7 and spec.mlp_hidden == 36 and not spec.pre_norm
    spec = spec_from_model(small_timm("pre_norm", seed=0))
    assert spec.pre_norm
    # fvcore counts the pre-norm at 5 MACs per element of the 17 tokens entering block 0.
    assert uvc.count(spec, convention="fvcore").macs - uvc.count(spec.replace(pre_norm=False), convention="fvcore").macs \
        == 5 * spec.num_tokens * spec.embed_dim
    model = small_timm("plain", seed=0)
    parts = blocks(model)
    assert [p.index for p in parts] == [0, 1, 2]
    assert parts[1].qkv is model.blocks[1].attn.qkv and parts[1].fc2 is model.blocks[1].mlp.fc2
    assert parts[2].proj is model.blocks[2].attn.proj and parts[2].mlp is model.blocks[2].mlp


def tiny_vit(**kw):
    return VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, num_classes=3, **kw)


@pytest.mark.parametrize("make, where", [
    (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()),
     "model: Sequential is not a timm VisionTransformer"),
    (lambda: "vit", "model: expected a torch nn.Module"),
    (lambda: tiny_vit(global_pool="avgmax"), "model.global_pool: 'avgmax'"),
    (lambda: timm.models.eva.Eva(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, num_classes=3),
     "model: Eva is not a timm VisionTransformer"),
    (lambda: tiny_vit(fc_norm=True, global_pool="map"), "model.fc_norm"),
    (lambda: tiny_vit(act_layer=nn.ReLU), "model.blocks.0.mlp.act: activation ReLU is not GELU"),
    (lambda: tiny_vit(final_norm=False), "model.norm"),
    (lambda: tiny_vit(pos_embed="none"), "model.pos_embed"),
    (lambda: tiny_vit(dynamic_img_size=True), "dynamic_img_size"),
])
def test_unsupported_models_name_the_module(make, where):
    with pytest.raises(UnsupportedModelError, match=where.replace(".", r"\.").replace("(", r"\(")):
        spec_from_model(make())
    assert issubclass(UnsupportedModelError, TypeError)


def test_heterogeneous_blocks_are_refused():
    model = tiny_vit()
    model.blocks[1].mlp.fc1 = nn.Linear(8, 16)
    model.blocks[1].mlp.fc2 = nn.Linear(16, 8)
    with pytest.raises(UnsupportedModelError, match=r"model\.blocks\.1: hidden = 16 differs from block 0"):
        spec_from_model(model)


def test_counter_argument_errors():
    with pytest.raises(TypeError, match="count_macs: model"):
        count_macs("model", torch.zeros(1))
    with pytest.raises(TypeError, match="fvcore_macs: example_input"):
        fvcore_macs(nn.Linear(2, 2), [1, 2])
