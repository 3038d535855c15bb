"""`SlimViT`: the physically smaller ViT an `ArchPlan` describes.

Every block keeps its own number of heads and value width (queries/keys keep their full
width), its own MLP width, and only the parts that run: a skipped MHSA or MLP has no
modules and costs nothing, a block with both skipped is gone. A block after which the plan
has fewer tokens drops them between its MHSA and its MLP (`reduce_tokens`). Needs torch
only, so a saved slim model loads without timm or any training code. State-dict names follow timm's
(``blocks.0.attn.qkv.weight``, ...), with blocks numbered among the kept ones
(`SlimViT.block_index` maps them back to the source layers).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..plan import ArchPlan
from ..spec import ViTSpec

__all__ = ["SlimViT", "SlimAttention", "SlimMlp", "SlimBlock", "SlimAttentionPool", "LayerScale", "PatchEmbed",
           "attend", "reduce_tokens", "ranking_attention", "ACTIVATIONS"]


class QuickGELU(nn.Module):
    """x · sigmoid(1.702 x) (CLIP's GELU approximation, timm's QuickGELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# The MLP activations a slim model can have, by the name `SlimViT`'s ``act`` takes.
ACTIVATIONS = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "quick_gelu": QuickGELU,
               "silu": nn.SiLU}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *, fused: bool) -> torch.Tensor:
    """softmax(q·kᵀ·``scale``)·v per head: (B, h, N, qk_dim) queries and keys, (B, h, N, v_dim)
    values. ``fused``: torch SDPA, else explicit matmuls and softmax (what counters see). Unequal
    widths leave SDPA's fused kernel (2× slower on a CPU at batch 64;
    `benchmarks/bench_attention.py`), so ``fused`` pads the narrower side with zero columns: a
    narrower v's add nothing to the output and are sliced off, narrower q and k's add nothing to
    the logits (``scale`` is given, not derived from the width).
    """
    if not fused:
        return ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    vd, qd = v.shape[-1], q.shape[-1]
    if vd < qd:
        return F.scaled_dot_product_attention(q, k, F.pad(v, (0, qd - vd)), scale=scale)[..., :vd]
    if qd < vd:
        pad = (0, vd - qd)
        return F.scaled_dot_product_attention(F.pad(q, pad), F.pad(k, pad), v, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def ranking_attention(q: torch.Tensor, k: torch.Tensor, scale: float, *, class_token: bool,
                      head_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The (B, N) attention a block that drops tokens ranks them by.

    ``q``, ``k``: (B, h, N, qk_dim) queries and keys (after the q/k norms). With
    ``class_token``, the class token's row softmax(q₀·Kᵀ·``scale``); without one, every row
    softmax(q_i·Kᵀ·``scale``) averaged over the N queries: the attention each token receives.
    Then the mean over the heads, or over the heads ``head_weights`` (h,) keeps (a 0/1 mask).
    Each row sums to 1. MACs: h·ρ·N·qk_dim for the ρ = 1 or N rows (the cost model's ``fuse``);
    the softmax, the means and the weights are element-wise.
    """
    probs = ((q[:, :, :1] if class_token else q) * scale @ k.transpose(-2, -1)).softmax(dim=-1).mean(dim=2)
    if head_weights is None:
        return probs.mean(dim=1)
    w = head_weights.to(probs.dtype)
    return (probs * w[:, None]).sum(dim=1) / w.sum()


def reduce_tokens(x: torch.Tensor, attention: torch.Tensor, prefix_tokens: int,
                  tokens_out: int) -> torch.Tensor:
    """EViT-style token reduction: what a block that drops tokens does after its MHSA.

    ``x``: (B, N, D) tokens, the first ``prefix_tokens`` of them class / distillation /
    register tokens. ``attention``: (B, N) probabilities over the N tokens that rank them
    (`ranking_attention`: the class token's attention, or the attention each token receives).
    Returns (B, ``tokens_out``, D): the prefix tokens unchanged, then the k = ``tokens_out`` −
    prefix − 1 ≥ 1 other tokens with the highest attention (highest first), then one fused
    token: the sum of the remaining N − ``tokens_out`` + 1 tokens weighted by their attention
    renormalised to sum 1. The fusion is a batched matmul of (N − ``tokens_out`` + 1)·D MACs per
    image; the ranking and the weights cost no MACs.
    """
    for name, value in (("prefix_tokens", prefix_tokens), ("tokens_out", tokens_out)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"reduce_tokens: {name} must be an int, got {type(value).__name__}")
    if x.dim() != 3:
        raise ValueError(f"reduce_tokens: x must have shape (batch, tokens, dim), got {tuple(x.shape)}")
    b, n, d = x.shape
    # Shapes are constants while tracing (ONNX export); checking them there only warns.
    if not torch.jit.is_tracing():
        if prefix_tokens < 0 or not prefix_tokens + 2 <= tokens_out < n:
            raise ValueError(f"reduce_tokens: tokens_out must lie in {prefix_tokens + 2}..{n - 1} (the prefix "
                             f"tokens, at least one kept token and the fused one; fewer than the {n} in), "
                             f"got {tokens_out}")
        if tuple(attention.shape) != (b, n):
            raise ValueError(f"reduce_tokens: attention must have shape {(b, n)}, got {tuple(attention.shape)}")
    keep = tokens_out - prefix_tokens - 1
    # A full descending sort (TopK over all patches): kept first, the fused rest after.
    scores, order = attention[:, prefix_tokens:].topk(n - prefix_tokens, dim=1)
    patches = x[:, prefix_tokens:]
    kept = patches.gather(1, order[:, :keep, None].expand(-1, -1, d))
    dropped = patches.gather(1, order[:, keep:, None].expand(-1, -1, d))
    weights = scores[:, keep:]
    # Weights that all underflowed to 0 would give 0/0; the fused token is then 0, not NaN.
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    fused = weights.unsqueeze(1) @ dropped
    return torch.cat([x[:, :prefix_tokens], kept, fused], dim=1)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (timm's LayerScale, torch only)."""

    def __init__(self, dim: int, init_values: float = 1e-5, *, device=None, dtype=None) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values), device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: Conv2d with kernel = stride = patch size."""

    def __init__(self, image_size: tuple[int, int], patch_size: int, in_channels: int, embed_dim: int, *,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size, bias=bias, device=device,
                              dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Shapes are constants while tracing (ONNX export); checking them there only warns.
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"PatchEmbed: input size {tuple(x.shape[-2:])} != model image size {self.image_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class SlimAttention(nn.Module):
    """Multi-head self-attention whose value width may differ from the query/key width.

    qkv: Linear(dim → heads·(2·qk_dim + v_dim)) laid out [q heads | k heads | v heads];
    proj: Linear(heads·v_dim → dim). ``fused_attn`` picks torch SDPA (fast; a narrower v is
    padded, see `attend`) or explicit matmuls and softmax (what fvcore can count), like timm's
    attribute of that name.
    Called with ``ranking="class"`` (or ``"received"``) it also returns the (B, N) attention
    that ranks tokens, `ranking_attention` over all its heads: the class token's row, one
    extra matmul of heads·N·qk_dim MACs per image (or every row averaged over the queries,
    heads·N²·qk_dim), in both paths. ``qk_norm``: LayerNorms over each head's queries and keys
    (one each, shared by the heads, as in timm), before the attention. ``scale``: of the
    logits, qk_dim^-½ by default; a block whose queries and keys were narrowed keeps the dense
    model's, so the kept dims' logits stay as they were.
    """

    def __init__(self, dim: int, num_heads: int, qk_dim: int, v_dim: int, *, qkv_bias: bool = True,
                 proj_bias: bool = True, qk_norm: bool = False, norm_eps: float = 1e-6, fused_attn: bool = True,
                 scale: float | None = None, device=None, dtype=None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.q_norm = nn.LayerNorm(qk_dim, eps=norm_eps, **dd) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(qk_dim, eps=norm_eps, **dd) if qk_norm else nn.Identity()
        self.num_heads, self.qk_dim, self.v_dim = num_heads, qk_dim, v_dim
        self.scale = qk_dim ** -0.5 if scale is None else scale
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, num_heads * (2 * qk_dim + v_dim), bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(num_heads * v_dim, dim, bias=proj_bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, ranking: str | None = None):
        b, n, _ = x.shape
        h, qd, vd = self.num_heads, self.qk_dim, self.v_dim
        q, k, v = self.qkv(x).split((h * qd, h * qd, h * vd), dim=-1)
        q = q.reshape(b, n, h, qd).transpose(1, 2)
        k = k.reshape(b, n, h, qd).transpose(1, 2)
        v = v.reshape(b, n, h, vd).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        x = attend(q, k, v, self.scale, fused=self.fused_attn)
        out = self.proj(x.transpose(1, 2).reshape(b, n, h * vd))
        if ranking is None:
            return out
        # Its own matmul in both paths: SDPA cannot return attention weights, and doing the
        # same in the explicit path keeps the MAC count independent of fused_attn.
        return out, ranking_attention(q, k, self.scale, class_token=ranking == "class")


class SlimMlp(nn.Module):
    """fc1 (dim → hidden), activation, fc2 (hidden → dim); or, ``gated``, timm's SwiGLU layout:
    act(fc1_g(x)) · fc1_x(x), then fc2, each of the ``hidden`` units a gate and a value row.
    ``act``: a key of `ACTIVATIONS`."""

    def __init__(self, dim: int, hidden: int, *, bias: bool = True, act: str = "gelu", gated: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.gated = gated
        if gated:
            self.fc1_g = nn.Linear(dim, hidden, bias=bias, **dd)
            self.fc1_x = nn.Linear(dim, hidden, bias=bias, **dd)
        else:
            self.fc1 = nn.Linear(dim, hidden, bias=bias, **dd)
        self.act = ACTIVATIONS[act]()
        self.fc2 = nn.Linear(hidden, dim, bias=bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.fc2(self.act(self.fc1_g(x)) * self.fc1_x(x))
        return self.fc2(self.act(self.fc1(x)))


class SlimAttentionPool(nn.Module):
    """timm's attention-pool head (``AttentionPoolLatent`` with one latent query, as in
    SigLIP), torch only and never pruned: the latent attends to every token with ``num_heads``
    heads, then proj, and a residual MLP of ``mlp_hidden`` units after a LayerNorm. Returns
    (B, dim). Parameter names follow timm's."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, *, norm_eps: float = 1e-6, act: str = "gelu",
                 fused_attn: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = fused_attn
        self.latent = nn.Parameter(torch.zeros(1, 1, dim, **dd))
        self.q = nn.Linear(dim, dim, **dd)
        self.kv = nn.Linear(dim, 2 * dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = SlimMlp(dim, mlp_hidden, act=act, **dd)
        nn.init.trunc_normal_(self.latent, std=dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h, hd = self.num_heads, self.head_dim
        q = self.q(self.latent.expand(b, -1, -1)).reshape(b, 1, h, hd).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        x = self.proj(attend(q, k, v, self.scale, fused=self.fused_attn).transpose(1, 2).reshape(b, 1, d))
        x = x + self.mlp(self.norm(x))
        return x[:, 0]


class SlimBlock(nn.Module):
    """A pre-norm transformer block whose MHSA part (``num_heads`` = 0) or MLP part
    (``mlp_hidden`` = 0) may be absent: an absent part has no modules and adds nothing.

    With ``tokens_out`` set, the block drops tokens after its MHSA (which must be present):
    `reduce_tokens` by the class token's attention (``class_token``) or else by the attention
    each token receives, keeping ``prefix_tokens`` in place; the MLP then runs on
    ``tokens_out`` tokens. ``qk_scale``: the attention's logit scale (`SlimAttention`'s ``scale``).
    """

    def __init__(self, dim: int, *, num_heads: int, qk_dim: int, v_dim: int, mlp_hidden: int,
                 qkv_bias: bool = True, proj_bias: bool = True, norm_eps: float = 1e-6,
                 init_values: float | None = None, act: str = "gelu", gated_mlp: bool = False,
                 qk_norm: bool = False, fused_attn: bool = True, tokens_out: int | None = None,
                 prefix_tokens: int = 1, class_token: bool = True, qk_scale: float | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        if tokens_out is not None and not num_heads:
            raise ValueError("SlimBlock: tokens_out needs the MHSA part (num_heads >= 1): tokens are dropped "
                             "by their attention")
        self.tokens_out, self.prefix_tokens = tokens_out, prefix_tokens
        self.ranking = "class" if class_token else "received"
        dd = dict(device=device, dtype=dtype)
        self.norm1 = self.attn = self.ls1 = self.norm2 = self.mlp = self.ls2 = None
        if num_heads:
            self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **dd)
            self.attn = SlimAttention(dim, num_heads, qk_dim, v_dim, qkv_bias=qkv_bias, proj_bias=proj_bias,
                                      qk_norm=qk_norm, norm_eps=norm_eps, fused_attn=fused_attn, scale=qk_scale, **dd)
            self.ls1 = LayerScale(dim, init_values, **dd) if init_values is not None else nn.Identity()
        if mlp_hidden:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
            self.mlp = SlimMlp(dim, mlp_hidden, bias=proj_bias, act=act, gated=gated_mlp, **dd)
            self.ls2 = LayerScale(dim, init_values, **dd) if init_values is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens_out is not None:
            y, attention = self.attn(self.norm1(x), ranking=self.ranking)
            x = reduce_tokens(x + self.ls1(y), attention, self.prefix_tokens, self.tokens_out)
        elif self.attn is not None:
            x = x + self.ls1(self.attn(self.norm1(x)))
        if self.mlp is not None:
            x = x + self.ls2(self.mlp(self.norm2(x)))
        return x


class SlimViT(nn.Module):
    """A ViT / DeiT pruned to ``plan`` (a plan of ``spec``), with weights initialised afresh;
    use `SlimViT.from_timm` to build one from a trained timm model, or `uvc.torch.load`.

    Keyword configuration mirrors timm: ``qkv_bias``, ``proj_bias`` (attention proj and both
    MLP layers), ``norm_eps``, ``init_values`` (LayerScale on when not None), ``act`` (the MLP
    activation, a key of `ACTIVATIONS`), ``no_embed_class`` (position embedding on patches
    only) and ``fused_attn`` (SDPA; set False for explicit attention that fvcore can count).
    The spec says the rest: pooling (class token, average over the non-prefix tokens, or the
    attention-pool head), ``fc_norm``, ``qk_norm``, ``gated_mlp``, ``class_token`` (the
    keyword of that name, kept for folders saved by uvc 0.2, must agree with it).
    A distilled spec (``classifier_heads`` = 2) gets a distillation token and a second head;
    like timm's VisionTransformerDistilled it returns the mean of both heads' logits, or both
    when ``distilled_training`` is set and the model is in training mode. Prefix tokens
    beyond the class (and distillation) token are register tokens.
    """

    def __init__(self, spec: ViTSpec, plan: ArchPlan, *, qkv_bias: bool = True, proj_bias: bool = True,
                 norm_eps: float = 1e-6, init_values: float | None = None, act: str = "gelu",
                 no_embed_class: bool = False, class_token: bool | None = None, fused_attn: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__()
        if not isinstance(spec, ViTSpec):
            raise TypeError(f"SlimViT: spec must be a ViTSpec, got {type(spec).__name__}")
        if not isinstance(plan, ArchPlan):
            raise TypeError(f"SlimViT: plan must be an ArchPlan, got {type(plan).__name__}")
        if plan.spec != spec:
            raise ValueError("SlimViT: plan was built for a different spec")
        if spec.classifier_heads not in (1, 2) or spec.prefix_tokens < spec.classifier_heads * (spec.pool == "token"):
            raise ValueError(f"SlimViT: spec has {spec.classifier_heads} classifier heads and "
                             f"{spec.prefix_tokens} prefix tokens; expected 1 head (class token plus optional "
                             "register tokens) or 2 (class and distillation tokens)")
        if spec.classifier_heads == 2 and spec.prefix_tokens != 2:
            raise ValueError("SlimViT: a distilled spec has exactly 2 prefix tokens (class, distillation)")
        if act not in ACTIVATIONS:
            raise ValueError(f"SlimViT: act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        if class_token is not None and bool(class_token) != spec.class_token:
            raise ValueError(f"SlimViT: class_token={class_token!r} disagrees with the spec's "
                             f"class_token={spec.class_token}")
        class_token = spec.class_token
        if not class_token and spec.pool == "token":
            raise ValueError("SlimViT: a spec without a class token needs pool 'avg' or 'map'")
        dd = dict(device=device, dtype=dtype)
        d = spec.embed_dim
        self.spec, self.plan = spec, plan
        self.config = dict(qkv_bias=bool(qkv_bias), proj_bias=bool(proj_bias), norm_eps=float(norm_eps),
                           init_values=None if init_values is None else float(init_values),
                           act=act, no_embed_class=bool(no_embed_class), class_token=bool(class_token),
                           fused_attn=bool(fused_attn))
        self.num_classes = spec.num_classes
        self.num_prefix_tokens = spec.prefix_tokens
        self.distilled = spec.classifier_heads == 2
        self.distilled_training = False
        # Free-form metadata (e.g. preprocessing) that `uvc.torch.save` writes into arch.json.
        self.meta: dict[str, Any] = {}

        # timm drops the patch-embedding bias exactly when it adds the pre-norm (CLIP's layout).
        self.patch_embed = PatchEmbed(spec.image_size, spec.patch_size, spec.in_channels, d, bias=not spec.pre_norm,
                                      **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d, **dd)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d, **dd)) if self.distilled else None
        n_reg = spec.prefix_tokens - int(class_token) - int(self.distilled)
        self.reg_token = nn.Parameter(torch.zeros(1, n_reg, d, **dd)) if n_reg else None
        pos_len = spec.num_patches if no_embed_class else spec.num_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_len, d, **dd))
        for p in (self.cls_token, self.dist_token, self.reg_token, self.pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

        kept, index = [], []
        for i, layer in enumerate(plan.layers):
            if not (layer.attn or layer.mlp):
                continue
            # The plan (validated by the core) lets only a block whose MHSA runs drop tokens.
            after = plan.layers[i + 1].tokens if i + 1 < spec.depth else layer.tokens
            kept.append(SlimBlock(d, num_heads=len(layer.heads) if layer.attn else 0,
                                  qk_dim=layer.qk_dim if layer.attn else spec.qk_head_dim,
                                  qk_scale=spec.qk_head_dim ** -0.5,
                                  v_dim=layer.v_dim, mlp_hidden=len(layer.neurons) if layer.mlp else 0,
                                  qkv_bias=qkv_bias, proj_bias=proj_bias, norm_eps=norm_eps,
                                  init_values=init_values, act=act, gated_mlp=spec.gated_mlp,
                                  qk_norm=spec.qk_norm, fused_attn=fused_attn, tokens_out=after if after < layer.tokens else None,
                                  prefix_tokens=spec.prefix_tokens, class_token=class_token, **dd))
            index.append(i)
        self.blocks = nn.Sequential(*kept)
        self.block_index: tuple[int, ...] = tuple(index)
        self.norm_pre = nn.LayerNorm(d, eps=norm_eps, **dd) if spec.pre_norm else nn.Identity()
        # With fc_norm the final norm moves after the pooling (timm's layout).
        self.norm = nn.Identity() if spec.fc_norm else nn.LayerNorm(d, eps=norm_eps, **dd)
        self.fc_norm = nn.LayerNorm(d, eps=norm_eps, **dd) if spec.fc_norm else nn.Identity()
        self.attn_pool = (SlimAttentionPool(d, spec.num_heads, spec.mlp_hidden, norm_eps=norm_eps, act=act,
                                            fused_attn=fused_attn, **dd) if spec.pool == "map" else None)

        def head() -> nn.Module:
            return nn.Linear(d, spec.num_classes, **dd) if spec.num_classes > 0 else nn.Identity()
        self.head = head()
        self.head_dist = head() if self.distilled else None

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        prefix = [t.expand(b, -1, -1) for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        if self.config["no_embed_class"]:
            return torch.cat(prefix + [x + self.pos_embed], dim=1)
        return torch.cat(prefix + [x], dim=1) + self.pos_embed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) → normalised tokens (B, N, D)."""
        x = self.norm_pre(self._pos_embed(self.patch_embed(x)))
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        """Tokens → logits: pooled (class token, average or attention pool), ``fc_norm``, head;
        distilled: mean of both heads, see the class doc."""
        if not self.distilled:
            pool = self.spec.pool
            x = x[:, 0] if pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1) if pool == "avg" \
                else self.attn_pool(x)
            x = self.fc_norm(x)
            return x if pre_logits else self.head(x)
        x, x_dist = x[:, 0], x[:, 1]
        if pre_logits:
            return (x + x_dist) / 2
        x, x_dist = self.head(x), self.head_dist(x_dist)
        if self.distilled_training and self.training:
            return x, x_dist
        return (x + x_dist) / 2

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))

    @classmethod
    def from_timm(cls, model: nn.Module, plan: ArchPlan, *, fused_attn: bool = True) -> "SlimViT":
        """Copies the kept weights of a timm ViT into a new `SlimViT` on the model's device and
        dtype, in the model's train/eval mode.

        The result computes what ``model`` computes with the proj input columns of removed heads
        and value dims zeroed, the fc2 input columns of removed neurons zeroed, skipped
        parts adding nothing and, where the plan's token count falls after block l, block l
        dropping tokens after its MHSA by `reduce_tokens`, with the ranking attention averaged
        over the kept heads only.
        """
        from .introspect import gated_rows, model_config, spec_from_model, value_rows
        if not isinstance(plan, ArchPlan):
            raise TypeError(f"SlimViT.from_timm: plan must be an ArchPlan, got {type(plan).__name__}")
        spec = spec_from_model(model)
        if plan.spec.replace(name=None) != spec.replace(name=None):
            raise ValueError(f"SlimViT.from_timm: the plan's spec {plan.spec} does not match the model's {spec}")
        ref = model.patch_embed.proj.weight
        slim = cls(plan.spec, plan, **model_config(model), fused_attn=fused_attn, device=ref.device, dtype=ref.dtype)
        src = model.state_dict()
        out = {k: src[k] for k in slim.state_dict() if not k.startswith("blocks.")}
        attn_dim, v_start = model.blocks[0].attn.attn_dim, value_rows(model.blocks[0].attn).start
        hd = spec.qk_head_dim
        for j, l in enumerate(slim.block_index):
            layer, s, t = plan.layers[l], f"blocks.{l}.", f"blocks.{j}."
            if layer.attn:
                qk = [h * hd + i for h, idx in zip(layer.heads, layer.qk_index) for i in idx]
                v = [h * hd + i for h, idx in zip(layer.heads, layer.v_index) for i in idx]
                rows = torch.tensor(qk + [attn_dim + r for r in qk] + [v_start + r for r in v], device=ref.device)
                cols = torch.tensor(v, device=ref.device)
                out[t + "attn.qkv.weight"] = src[s + "attn.qkv.weight"][rows]
                out[t + "attn.proj.weight"] = src[s + "attn.proj.weight"][:, cols]
                if s + "attn.qkv.bias" in src:
                    out[t + "attn.qkv.bias"] = src[s + "attn.qkv.bias"][rows]
                for name in ("attn.proj.bias", "norm1.weight", "norm1.bias", "ls1.gamma", "attn.q_norm.weight",
                             "attn.q_norm.bias", "attn.k_norm.weight", "attn.k_norm.bias"):
                    if s + name in src:
                        out[t + name] = src[s + name]
            if layer.mlp:
                n = torch.tensor(layer.neurons, device=ref.device)
                # A gated unit is a gate row and a value row: timm's SwiGLU keeps them in two
                # modules, GluMlp in the two halves of fc1.
                rows = zip(("fc1_g", "fc1_x"), gated_rows(model.blocks[l].mlp)) if spec.gated_mlp \
                    else [("fc1", ("fc1", 0))]
                for dst, (name, offset) in rows:
                    for p in ("weight", "bias"):
                        if f"{s}mlp.{name}.{p}" in src:
                            out[f"{t}mlp.{dst}.{p}"] = src[f"{s}mlp.{name}.{p}"][n + offset]
                out[t + "mlp.fc2.weight"] = src[s + "mlp.fc2.weight"][:, n]
                for name in ("mlp.fc2.bias", "norm2.weight", "norm2.bias", "ls2.gamma"):
                    if s + name in src:
                        out[t + name] = src[s + name]
        slim.load_state_dict(out, strict=True)
        return slim.train(model.training)
