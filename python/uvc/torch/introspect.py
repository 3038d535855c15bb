"""Reading a timm Vision Transformer: which models are supported, their `ViTSpec`, their parts.

Supported: timm 1.0.x ``VisionTransformer`` and ``VisionTransformerDistilled``: class-token,
average or attention-pool (``global_pool='map'``) pooling, with or without a class token,
register tokens, ``pre_norm``, ``fc_norm``, ``qk_norm``, LayerScale; timm ``Block`` /
``Attention``; ``Mlp``, ``GluMlp`` (``SwiGLUPacked``) or ``SwiGLU`` with GELU, GELU-tanh,
QuickGELU or SiLU; LayerNorm. Anything else (timm's ``Eva`` family among them) raises
`UnsupportedModelError` naming the module and why, since the cost model and the slim export
would silently be wrong for it.
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
    fc2: nn.Linear


def _fail(path: str, why: str) -> None:
    raise UnsupportedModelError(f"{path}: {why}")


def _timm():
    from timm.layers import Attention, AttentionPoolLatent, GluMlp, LayerScale, Mlp, PatchEmbed, SwiGLU
    from timm.layers.activations import GELU, GELUTanh, QuickGELU
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import Block, VisionTransformer
    return dict(Attention=Attention, AttentionPoolLatent=AttentionPoolLatent, GluMlp=GluMlp, SwiGLU=SwiGLU,
                LayerScale=LayerScale, Mlp=Mlp, PatchEmbed=PatchEmbed, GELU=GELU, GELUTanh=GELUTanh,
                QuickGELU=QuickGELU, Block=Block, VisionTransformer=VisionTransformer,
                VisionTransformerDistilled=VisionTransformerDistilled)


def _is_distilled(model: nn.Module) -> bool:
    return type(model) is _timm()["VisionTransformerDistilled"]


def _activation(act: nn.Module, path: str) -> str:
    """The `SlimMlp` name of a timm MLP activation: gelu, gelu_tanh, quick_gelu or silu."""
    t = _timm()
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    if type(act) is t["GELU"]:
        return "gelu"
    if type(act) is t["GELUTanh"]:
        return "gelu_tanh"
    if type(act) is t["QuickGELU"]:
        return "quick_gelu"
    if type(act) is nn.SiLU:
        return "silu"
    _fail(path, f"activation {type(act).__name__} is not GELU, GELU-tanh, QuickGELU or SiLU")


def _mlp(mlp: nn.Module, d: int, path: str) -> dict:
    """A block's MLP: its kind, units (hidden width; a gated MLP's unit is a gate-and-value
    pair of fc1 rows), activation and biases. Refuses anything else."""
    t = _timm()
    kind = {t["Mlp"]: "mlp", t["GluMlp"]: "glu", t["SwiGLU"]: "swiglu"}.get(type(mlp))
    if kind is None:
        _fail(path, f"{type(mlp).__name__} is not timm's Mlp, GluMlp (SwiGLUPacked) or SwiGLU")
    fc1s = [mlp.fc1_g, mlp.fc1_x] if kind == "swiglu" else [mlp.fc1]
    if any(type(f) is not nn.Linear for f in fc1s + [mlp.fc2]):
        _fail(path, "convolutional MLPs are not supported")
    if not isinstance(mlp.norm, nn.Identity):
        _fail(f"{path}.norm", "a norm inside the MLP (scale_mlp_norm) is not supported")
    if kind == "glu" and (mlp.chunk_dim != -1 or mlp.fc1.out_features % 2):
        _fail(path, "a GluMlp must split an even fc1 output along the last dim")
    units = mlp.fc1.out_features // 2 if kind == "glu" else fc1s[0].out_features
    if any(f.in_features != d for f in fc1s) or mlp.fc2.out_features != d or mlp.fc2.in_features != units \
            or (kind == "swiglu" and mlp.fc1_x.out_features != units):
        _fail(path, "fc1/fc2 shapes do not match the embedding dim and the hidden width")
    biases = {f.bias is not None for f in fc1s}
    if len(biases) != 1:
        _fail(path, "fc1 halves with and without bias are not supported")
    return dict(kind=kind, units=units, act=_activation(mlp.act, f"{path}.act"),
                bias=(biases.pop(), mlp.fc2.bias is not None))


def _attention_pool(model: nn.Module, d: int, heads: int, mlp_hidden: int, eps: float, act: str) -> None:
    """Checks timm's attention-pool head is the one the cost model counts: one latent query,
    q and kv projections with biases, no q/k norm or position embedding, its own LayerNorm and
    an Mlp of the blocks' hidden width and activation ``act``, token output."""
    t, pool, path = _timm(), model.attn_pool, "model.attn_pool"
    if type(pool) is not t["AttentionPoolLatent"]:
        _fail(path, f"{type(pool).__name__} is not timm's AttentionPoolLatent")
    if pool.latent_len != 1 or pool.pool != "token" or pool.pos_embed is not None:
        _fail(path, "only one latent query, token output and no position embedding are supported")
    if not (isinstance(pool.q_norm, nn.Identity) and isinstance(pool.k_norm, nn.Identity)):
        _fail(path, "qk_norm in the attention-pool head is not supported")
    if pool.num_heads != heads:
        _fail(path, f"{pool.num_heads} heads; the cost model counts the blocks' {heads}")
    linears = [pool.q, pool.kv, pool.proj]
    if any(type(m) is not nn.Linear or m.bias is None for m in linears) or pool.q.in_features != d \
            or pool.q.out_features != d or pool.kv.out_features != 2 * d or pool.proj.out_features != d:
        _fail(path, f"expected q Linear({d}, {d}), kv Linear({d}, {2 * d}), proj Linear({d}, {d}), all with bias")
    if _layer_norm(pool.norm, f"{path}.norm") != eps:
        _fail(f"{path}.norm", "its LayerNorm eps differs from the blocks'")
    desc = _mlp(pool.mlp, d, f"{path}.mlp")
    if desc["kind"] != "mlp" or desc["units"] != mlp_hidden or desc["bias"] != (True, True):
        _fail(f"{path}.mlp", f"expected an Mlp with bias of the blocks' hidden width {mlp_hidden}")
    if desc["act"] != act:
        _fail(f"{path}.mlp.act", f"differs from the blocks' activation ({act})")


def _layer_norm(norm: nn.Module, path: str, width: int | None = None) -> float:
    """The eps of an affine LayerNorm with bias over one dim (``width`` when given)."""
    if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine or norm.bias is None:
        _fail(path, f"{type(norm).__name__} is not an affine LayerNorm with bias")
    if len(norm.normalized_shape) != 1 or (width is not None and norm.normalized_shape[0] != width):
        _fail(path, f"LayerNorm over {tuple(norm.normalized_shape)}, expected "
                    f"{'the embedding dim' if width is None else f'({width},)'} only")
    return float(norm.eps)


def check_supported(model: Any) -> None:
    """Raises `UnsupportedModelError` (a TypeError) naming the first module uvc cannot handle."""
    _describe(model)


def _describe(model: Any) -> dict:
    """Checks ``model`` (see `check_supported`) and returns what the spec and `SlimViT` need
    beyond the sizes: block 0's description and the model-level layout."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"model: expected a torch nn.Module, got {type(model).__name__}")
    t = _timm()
    if type(model) not in (t["VisionTransformer"], t["VisionTransformerDistilled"]):
        _fail("model", f"{type(model).__name__} is not a timm VisionTransformer or VisionTransformerDistilled"
                       + (" (timm's Eva family, RoPE ViTs among them, is not supported)"
                          if type(model).__name__ == "Eva" else ""))
    pool = model.global_pool
    if pool not in ("token", "avg", "map"):
        _fail("model.global_pool", f"{pool!r} pooling; 'token', 'avg' and 'map' are supported")
    if pool != "map" and getattr(model, "attn_pool", None) is not None:
        _fail("model.attn_pool", f"an attention pool with global_pool={pool!r} is not supported")
    if model.dynamic_img_size:
        _fail("model", "dynamic_img_size=True; only a fixed input size is supported")
    if model.pos_embed is None:
        _fail("model.pos_embed", "absent; a learned position embedding is required")
    if _is_distilled(model) and model.reg_token is not None:
        _fail("model.reg_token", "register tokens in a distilled model are ignored by timm itself")
    fc_norm = not isinstance(model.fc_norm, nn.Identity)
    if fc_norm:
        if _is_distilled(model):
            _fail("model.fc_norm", "a distilled model's heads read the tokens without fc_norm (timm ignores it)")
        if pool == "map":
            _fail("model.fc_norm", "a norm after the attention-pool head is not supported")
        if not isinstance(model.norm, nn.Identity):
            _fail("model.norm", "a final norm over the tokens and an fc_norm together are not supported")
        final = model.fc_norm
        eps = _layer_norm(final, "model.fc_norm")
    else:
        if isinstance(model.norm, nn.Identity):
            _fail("model.norm", "the model has no final norm (final_norm=False); it is required")
        final = model.norm
        eps = _layer_norm(final, "model.norm")
    if not isinstance(model.norm_pre, nn.Identity) and _layer_norm(model.norm_pre, "model.norm_pre") != eps:
        _fail("model.norm_pre", "its LayerNorm eps differs from the final norm's")
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
        attn = blk.attn
        if type(attn) is not t["Attention"]:
            _fail(f"{path}.attn", f"{type(attn).__name__} is not timm.layers.Attention")
        qk_norm = not isinstance(attn.q_norm, nn.Identity)
        if qk_norm != (not isinstance(attn.k_norm, nn.Identity)):
            _fail(f"{path}.attn", "a norm on queries or keys only is not supported")
        if qk_norm:
            for name in ("q_norm", "k_norm"):
                norm = getattr(attn, name)
                if _layer_norm(norm, f"{path}.attn.{name}", attn.head_dim) != eps:
                    _fail(f"{path}.attn.{name}", "its LayerNorm eps differs from the other norms'")
        if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
            _fail(f"{path}.attn", "scale_norm or gated attention is not supported")
        if attn.qkv.in_features != d or attn.proj.out_features != d or attn.proj.in_features != attn.attn_dim \
                or attn.qkv.out_features != 3 * attn.attn_dim:
            _fail(f"{path}.attn", "qkv/proj shapes do not match the embedding dim and attn_dim")
        mlp = _mlp(blk.mlp, d, f"{path}.mlp")
        for name in ("ls1", "ls2"):
            ls = getattr(blk, name)
            if not isinstance(ls, (nn.Identity, t["LayerScale"])):
                _fail(f"{path}.{name}", f"{type(ls).__name__} is neither LayerScale nor Identity")
        desc = dict(
            eps=(_layer_norm(blk.norm1, f"{path}.norm1"), _layer_norm(blk.norm2, f"{path}.norm2")),
            heads=(attn.num_heads, attn.head_dim), hidden=mlp["units"], mlp_kind=mlp["kind"], qk_norm=qk_norm,
            qkv_bias=attn.qkv.bias is not None, proj_bias=attn.proj.bias is not None,
            mlp_bias=mlp["bias"], layer_scale=(isinstance(blk.ls1, t["LayerScale"]), isinstance(blk.ls2, t["LayerScale"])),
            act=mlp["act"])
        if desc["mlp_bias"] != (desc["proj_bias"],) * 2:
            _fail(f"{path}.mlp", "fc1/fc2 bias must be present exactly when attn.proj has one (timm's proj_bias)")
        if desc["layer_scale"][0] != desc["layer_scale"][1]:
            _fail(f"{path}", "LayerScale on one branch only is not supported")
        if first is None:
            first = desc
            if desc["eps"][0] != desc["eps"][1] or desc["eps"][0] != eps:
                _fail(path, "LayerNorm eps differs between norms")
        else:
            for key, value in desc.items():
                if value != first[key]:
                    _fail(path, f"{key} = {value} differs from block 0 ({first[key]}); "
                                "every block must have the same structure")
    if pool == "map":
        _attention_pool(model, d, first["heads"][0], first["hidden"], eps, first["act"])
    class_token = model.cls_token is not None
    if pool == "token" and not class_token:
        _fail("model.cls_token", "token pooling without a class token is not supported")
    return dict(first, pool=pool, fc_norm=fc_norm, class_token=class_token, eps=eps)


def spec_from_model(model: Any) -> ViTSpec:
    """The `ViTSpec` of a supported timm ViT (see `check_supported`). ``name`` is the timm
    architecture name when the model was built with ``timm.create_model``."""
    desc = _describe(model)
    attn = model.blocks[0].attn
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return ViTSpec(depth=len(model.blocks), embed_dim=model.embed_dim, num_heads=attn.num_heads,
                   mlp_hidden=desc["hidden"], patch_size=model.patch_embed.patch_size[0],
                   image_size=tuple(model.patch_embed.img_size), in_channels=model.patch_embed.proj.in_channels,
                   prefix_tokens=model.num_prefix_tokens, num_classes=model.num_classes,
                   classifier_heads=2 if _is_distilled(model) else 1, pre_norm=not isinstance(model.norm_pre, nn.Identity),
                   pool=desc["pool"], fc_norm=desc["fc_norm"], qk_norm=desc["qk_norm"],
                   gated_mlp=desc["mlp_kind"] != "mlp", class_token=desc["class_token"], qk_head_dim=attn.head_dim,
                   v_head_dim=attn.head_dim, name=cfg.get("architecture"))


def model_config(model: Any) -> dict:
    """What a slim copy needs besides the spec: the keyword arguments of `SlimViT`."""
    desc = _describe(model)
    ls = model.blocks[0].ls1
    return dict(qkv_bias=desc["qkv_bias"], proj_bias=desc["proj_bias"], norm_eps=desc["eps"],
                init_values=None if isinstance(ls, nn.Identity) else float(ls.init_values), act=desc["act"],
                no_embed_class=bool(model.no_embed_class))


def gated_rows(mlp: nn.Module) -> tuple[tuple[str, int], tuple[str, int]]:
    """Where a gated timm MLP keeps unit j's gate and value rows: (module name, row offset) each,
    the row being offset + j. SwiGLU: ``fc1_g`` and ``fc1_x``; GluMlp: the two halves of ``fc1``
    (``gate_last``: the value in the first half, the activated gate in the second)."""
    if hasattr(mlp, "fc1_g"):
        return ("fc1_g", 0), ("fc1_x", 0)
    halves = (("fc1", 0), ("fc1", mlp.fc2.in_features))
    return halves[::-1] if mlp.gate_last else halves


def unit_rows(mlp: nn.Module) -> tuple[tuple[str, int], ...]:
    """Where a supported timm MLP keeps hidden unit j's fc1 rows: (module name, row offset) per
    row, the row being offset + j (fc2's input column j belongs to the unit too). ``Mlp``: one
    row of ``fc1``; ``GluMlp`` / ``SwiGLU``: the gate and value rows of `gated_rows`."""
    t = _timm()
    return gated_rows(mlp) if type(mlp) in (t["GluMlp"], t["SwiGLU"]) else (("fc1", 0),)


def value_rows(attn: nn.Module) -> slice:
    """The rows of a timm ``Attention``'s qkv that compute the values. qkv is laid out [q heads |
    k heads | v heads], each head-major, so row ``start + h·head_dim + j`` is value dim j of head
    h, whose output is proj's input column h·head_dim + j."""
    return slice(2 * attn.attn_dim, 3 * attn.attn_dim)


def blocks(model: Any) -> list[BlockParts]:
    """The compressible modules of each block, in order (checks the model first)."""
    check_supported(model)
    return [BlockParts(index=i, block=b, attn=b.attn, qkv=b.attn.qkv, proj=b.attn.proj, mlp=b.mlp,
                       fc2=b.mlp.fc2) for i, b in enumerate(model.blocks)]
