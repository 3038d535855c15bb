"""Reading a timm Vision Transformer: which models are supported, their `ViTSpec`, their parts.

Supported: timm 1.0.x ``VisionTransformer`` and ``VisionTransformerDistilled`` with class-token
pooling, timm ``Block`` / ``Attention`` / ``Mlp`` (GELU), LayerNorm, optional LayerScale and
register tokens. Anything else raises `UnsupportedModelError` naming the module and why, since
the cost model and the slim export would silently be wrong for it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..spec import ViTSpec

__all__ = ["UnsupportedModelError", "BlockParts", "check_supported", "spec_from_model", "model_config", "blocks"]


class UnsupportedModelError(TypeError):
    """The model (or one of its modules) is not a structure uvc can count, compress or export."""


@dataclasses.dataclass(frozen=True)
class BlockParts:
    """The modules of block ``index`` that compression touches."""

    index: int
    block: nn.Module
    attn: nn.Module
    qkv: nn.Linear
    proj: nn.Linear
    mlp: nn.Module
    fc1: nn.Linear
    fc2: nn.Linear


def _fail(path: str, why: str) -> None:
    raise UnsupportedModelError(f"{path}: {why}")


def _timm():
    from timm.layers import Attention, LayerScale, Mlp, PatchEmbed
    from timm.layers.activations import GELU, GELUTanh
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import Block, VisionTransformer
    return dict(Attention=Attention, LayerScale=LayerScale, Mlp=Mlp, PatchEmbed=PatchEmbed, GELU=GELU,
                GELUTanh=GELUTanh, Block=Block, VisionTransformer=VisionTransformer,
                VisionTransformerDistilled=VisionTransformerDistilled)


def _is_distilled(model: nn.Module) -> bool:
    return type(model) is _timm()["VisionTransformerDistilled"]


def _gelu_approximate(act: nn.Module, path: str) -> str:
    t = _timm()
    if isinstance(act, nn.GELU):
        return act.approximate
    if type(act) is t["GELU"]:
        return "none"
    if type(act) is t["GELUTanh"]:
        return "tanh"
    _fail(path, f"activation {type(act).__name__} is not GELU; only GELU MLPs are supported")


def _layer_norm(norm: nn.Module, path: str) -> float:
    if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine or norm.bias is None:
        _fail(path, f"{type(norm).__name__} is not an affine LayerNorm with bias")
    if len(norm.normalized_shape) != 1:
        _fail(path, f"LayerNorm over {tuple(norm.normalized_shape)}, expected the embedding dim only")
    return float(norm.eps)


def check_supported(model: Any) -> None:
    """Raises `UnsupportedModelError` (a TypeError) naming the first module uvc cannot handle."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"model: expected a torch nn.Module, got {type(model).__name__}")
    t = _timm()
    if type(model) not in (t["VisionTransformer"], t["VisionTransformerDistilled"]):
        _fail("model", f"{type(model).__name__} is not a timm VisionTransformer or VisionTransformerDistilled")
    if model.global_pool != "token" or getattr(model, "attn_pool", None) is not None:
        _fail("model.global_pool", f"{model.global_pool!r} pooling; only 'token' (class token) pooling is supported")
    if model.dynamic_img_size:
        _fail("model", "dynamic_img_size=True; only a fixed input size is supported")
    if model.pos_embed is None:
        _fail("model.pos_embed", "absent; a learned position embedding is required")
    if _is_distilled(model) and model.reg_token is not None:
        _fail("model.reg_token", "register tokens in a distilled model are ignored by timm itself")
    if not isinstance(model.norm_pre, nn.Identity) and _layer_norm(model.norm_pre, "model.norm_pre") != model.norm.eps:
        _fail("model.norm_pre", "its LayerNorm eps differs from the final norm's")
    if not isinstance(model.fc_norm, nn.Identity):
        _fail("model.fc_norm", "a norm after pooling (fc_norm) is not supported")
    if isinstance(model.norm, nn.Identity):
        _fail("model.norm", "the model has no final norm (final_norm=False); it is required")
    _layer_norm(model.norm, "model.norm")
    d = model.embed_dim
    for name in ("head", "head_dist") if _is_distilled(model) else ("head",):
        head = getattr(model, name)
        if isinstance(head, nn.Identity) and model.num_classes == 0:
            continue
        if type(head) is not nn.Linear or head.in_features != d or head.out_features != model.num_classes \
                or head.bias is None:
            _fail(f"model.{name}", f"{type(head).__name__} is not a Linear({d}, {model.num_classes}) with bias")

    pe = model.patch_embed
    if type(pe) is not t["PatchEmbed"]:
        _fail("model.patch_embed", f"{type(pe).__name__} is not timm's PatchEmbed")
    conv = pe.proj
    # timm drops the patch-embedding bias exactly when it adds the pre-norm (CLIP's layout).
    biased = isinstance(model.norm_pre, nn.Identity)
    if type(conv) is not nn.Conv2d or conv.kernel_size != pe.patch_size or conv.stride != pe.patch_size \
            or conv.padding != (0, 0) or conv.dilation != (1, 1) or conv.groups != 1 or (conv.bias is not None) != biased:
        _fail("model.patch_embed.proj", f"expected a Conv2d {'with' if biased else 'without'} bias ({'no ' if biased else ''}"
                                        "pre-norm), kernel = stride = patch size, no padding")
    if pe.patch_size[0] != pe.patch_size[1]:
        _fail("model.patch_embed", f"non-square patches {pe.patch_size} are not supported")
    if not isinstance(pe.norm, nn.Identity) or not pe.flatten or pe.dynamic_img_pad or pe.img_size is None:
        _fail("model.patch_embed", "a norm, padding, dynamic size or unflattened output is not supported")

    if not isinstance(model.blocks, nn.Sequential) or len(model.blocks) == 0:
        _fail("model.blocks", "expected a non-empty nn.Sequential of timm Blocks")
    first = None
    for i, blk in enumerate(model.blocks):
        path = f"model.blocks.{i}"
        if type(blk) is not t["Block"]:
            _fail(path, f"{type(blk).__name__} is not timm's vision_transformer.Block")
        attn, mlp = blk.attn, blk.mlp
        if type(attn) is not t["Attention"]:
            _fail(f"{path}.attn", f"{type(attn).__name__} is not timm.layers.Attention")
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
            _fail(f"{path}.attn", "qk_norm is not supported")
        if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
            _fail(f"{path}.attn", "scale_norm or gated attention is not supported")
        if attn.qkv.in_features != d or attn.proj.out_features != d or attn.proj.in_features != attn.attn_dim \
                or attn.qkv.out_features != 3 * attn.attn_dim:
            _fail(f"{path}.attn", "qkv/proj shapes do not match the embedding dim and attn_dim")
        if type(mlp) is not t["Mlp"]:
            _fail(f"{path}.mlp", f"{type(mlp).__name__} is not timm.layers.Mlp")
        if type(mlp.fc1) is not nn.Linear or type(mlp.fc2) is not nn.Linear:
            _fail(f"{path}.mlp", "convolutional MLPs are not supported")
        if not isinstance(mlp.norm, nn.Identity):
            _fail(f"{path}.mlp.norm", "a norm inside the MLP (scale_mlp_norm) is not supported")
        if mlp.fc1.in_features != d or mlp.fc2.out_features != d:
            _fail(f"{path}.mlp", "fc1/fc2 shapes do not match the embedding dim")
        for name in ("ls1", "ls2"):
            ls = getattr(blk, name)
            if not isinstance(ls, (nn.Identity, t["LayerScale"])):
                _fail(f"{path}.{name}", f"{type(ls).__name__} is neither LayerScale nor Identity")
        desc = dict(
            eps=(_layer_norm(blk.norm1, f"{path}.norm1"), _layer_norm(blk.norm2, f"{path}.norm2")),
            heads=(attn.num_heads, attn.head_dim), hidden=mlp.fc1.out_features,
            qkv_bias=attn.qkv.bias is not None, proj_bias=attn.proj.bias is not None,
            mlp_bias=(mlp.fc1.bias is not None, mlp.fc2.bias is not None),
            layer_scale=(isinstance(blk.ls1, t["LayerScale"]), isinstance(blk.ls2, t["LayerScale"])),
            act=_gelu_approximate(mlp.act, f"{path}.mlp.act"))
        if desc["mlp_bias"] != (desc["proj_bias"],) * 2:
            _fail(f"{path}.mlp", "fc1/fc2 bias must be present exactly when attn.proj has one (timm's proj_bias)")
        if desc["layer_scale"][0] != desc["layer_scale"][1]:
            _fail(f"{path}", "LayerScale on one branch only is not supported")
        if first is None:
            first = desc
            if desc["eps"][0] != desc["eps"][1] or desc["eps"][0] != model.norm.eps:
                _fail(path, "LayerNorm eps differs between norms")
        else:
            for key, value in desc.items():
                if value != first[key]:
                    _fail(path, f"{key} = {value} differs from block 0 ({first[key]}); "
                                "every block must have the same structure")


def spec_from_model(model: Any) -> ViTSpec:
    """The `ViTSpec` of a supported timm ViT (see `check_supported`). ``name`` is the timm
    architecture name when the model was built with ``timm.create_model``."""
    check_supported(model)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return ViTSpec(depth=len(model.blocks), embed_dim=model.embed_dim, num_heads=attn.num_heads,
                   mlp_hidden=mlp.fc1.out_features, patch_size=model.patch_embed.patch_size[0],
                   image_size=tuple(model.patch_embed.img_size), in_channels=model.patch_embed.proj.in_channels,
                   prefix_tokens=model.num_prefix_tokens, num_classes=model.num_classes,
                   classifier_heads=2 if _is_distilled(model) else 1, pre_norm=not isinstance(model.norm_pre, nn.Identity),
                   qk_head_dim=attn.head_dim, v_head_dim=attn.head_dim, name=cfg.get("architecture"))


def model_config(model: Any) -> dict:
    """What a slim copy needs besides the spec: the keyword arguments of `SlimViT`."""
    check_supported(model)
    blk = model.blocks[0]
    ls = blk.ls1
    return dict(qkv_bias=blk.attn.qkv.bias is not None, proj_bias=blk.attn.proj.bias is not None,
                norm_eps=float(model.norm.eps), init_values=None if isinstance(ls, nn.Identity) else float(ls.init_values),
                gelu_approximate=_gelu_approximate(blk.mlp.act, "model.blocks.0.mlp.act"),
                no_embed_class=bool(model.no_embed_class))


def blocks(model: Any) -> list[BlockParts]:
    """The compressible modules of each block, in order (checks the model first)."""
    check_supported(model)
    return [BlockParts(index=i, block=b, attn=b.attn, qkv=b.attn.qkv, proj=b.attn.proj, mlp=b.mlp,
                       fc1=b.mlp.fc1, fc2=b.mlp.fc2) for i, b in enumerate(model.blocks)]
