"""`ViTSpec`: the shape of a dense Vision Transformer, by name or by numbers (from a timm model:
`uvc.torch.spec_from_model`)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

__all__ = ["ViTSpec", "spec_names"]

_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1


@dataclasses.dataclass(frozen=True)
class ViTSpec:
    """A plain ViT / DeiT architecture.

    Sizes are counts. ``qk_head_dim`` and ``v_head_dim`` are the widths of one head's
    queries/keys and values; in timm both equal ``embed_dim // num_heads`` unless the model
    was built with ``attn_dim`` or ``head_dim``. ``pre_norm``: a LayerNorm on the tokens before
    the first block (timm's ``pre_norm=True``, CLIP ViTs).

    Layout variants (timm's names): ``pool`` is timm's ``global_pool``: ``"token"`` (the class
    token, or class and distillation tokens), ``"avg"`` (the mean over the non-prefix tokens)
    or ``"map"`` (the attention-pool head of SigLIP, counted, never pruned). ``fc_norm``: the
    final LayerNorm normalises the pooled vector instead of every token. ``qk_norm``: a
    LayerNorm over each head's queries and keys. ``gated_mlp``: SwiGLU / ``GluMlp``, each of
    the ``mlp_hidden`` units a pair of fc1 rows (gate and value). ``class_token``: whether the
    first prefix token is a class token (default: whenever there is a prefix token); a block
    that drops tokens ranks them by its attention row, and without one by the attention each
    token receives, averaged over the queries (which costs the whole attention map again).
    """

    depth: int
    embed_dim: int
    num_heads: int
    mlp_hidden: int
    patch_size: int
    image_size: tuple[int, int]
    in_channels: int = 3
    prefix_tokens: int = 1
    num_classes: int = 1000
    classifier_heads: int = 1
    pre_norm: bool = False
    pool: str = "token"
    fc_norm: bool = False
    qk_norm: bool = False
    gated_mlp: bool = False
    class_token: bool | None = None
    qk_head_dim: int | None = None
    v_head_dim: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            size = (size, size)
        if (isinstance(size, (str, bytes)) or not isinstance(size, (tuple, list)) or len(size) != 2
                or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in size)):
            got = f"{size!r}" if isinstance(size, (tuple, list)) and len(size) <= 4 else type(size).__name__
            raise (ValueError if isinstance(size, (tuple, list)) else TypeError)(
                f"ViTSpec: image_size must be an int or a pair of ints (height, width), got {got}")
        object.__setattr__(self, "image_size", tuple(int(s) for s in size))
        if self.class_token is None:
            object.__setattr__(self, "class_token", isinstance(self.prefix_tokens, int) and self.prefix_tokens >= 1)
        for field in ("pre_norm", "fc_norm", "qk_norm", "gated_mlp", "class_token"):
            value = getattr(self, field)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"ViTSpec: {field} must be a bool, got {type(value).__name__}")
            object.__setattr__(self, field, bool(value))
        from ._core import LAYOUTS
        if not isinstance(self.pool, str) or self.pool not in LAYOUTS["pools"]:
            raise ValueError(f"ViTSpec: pool must be one of {LAYOUTS['pools']} (timm's global_pool), got {self.pool!r}")
        for field in ("depth", "embed_dim", "num_heads", "mlp_hidden", "patch_size", "in_channels",
                      "prefix_tokens", "num_classes", "classifier_heads", "qk_head_dim", "v_head_dim"):
            value = getattr(self, field)
            if value is None and field in ("qk_head_dim", "v_head_dim"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"ViTSpec: {field} must be an int, got {type(value).__name__}")
            object.__setattr__(self, field, int(value))
        for field in ("depth", "embed_dim", "num_heads", "mlp_hidden", "patch_size", "in_channels",
                      "prefix_tokens", "num_classes", "classifier_heads", "qk_head_dim", "v_head_dim",
                      "image_size"):
            for value in (self.image_size if field == "image_size" else (getattr(self, field),)):
                if value is not None and not _INT64_MIN <= value <= _INT64_MAX:
                    raise ValueError(f"ViTSpec: {field} must fit in int64, got {value}")
        # num_patches and the default head widths divide by these: check them before anything
        # computes with them (every other range check lives in the core).
        for field in ("patch_size", "num_heads"):
            if getattr(self, field) < 1:
                raise ValueError(f"ViTSpec: spec.{field}: must be at least 1, got {getattr(self, field)}")
        for field in ("qk_head_dim", "v_head_dim"):
            if getattr(self, field) is None:
                if self.embed_dim % self.num_heads:
                    raise ValueError(f"ViTSpec: {field} must be given when embed_dim {self.embed_dim} "
                                     f"is not a multiple of num_heads {self.num_heads}")
                object.__setattr__(self, field, self.embed_dim // self.num_heads)
        # Every range check lives in the core; building the encoding runs them now.
        from . import cost
        cost.check_spec(self)

    @functools.cached_property
    def encoded(self) -> np.ndarray:
        """The int64 array the Swift core reads (read-only)."""
        from ._core import LAYOUTS
        values = dict(dataclasses.asdict(self), image_height=self.image_size[0], image_width=self.image_size[1],
                      pool=LAYOUTS["pools"].index(self.pool))
        e = np.array([values[name] for name in LAYOUTS["spec"]], dtype=np.int64)
        e.flags.writeable = False
        return e

    @property
    def num_patches(self) -> int:
        return (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block (patches plus prefix tokens)."""
        return self.num_patches + self.prefix_tokens

    def replace(self, **changes: Any) -> "ViTSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ViTSpec":
        if not isinstance(d, dict):
            raise TypeError(f"ViTSpec.from_dict: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"ViTSpec.from_dict: unknown keys {sorted(unknown)}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"ViTSpec.from_dict: missing keys {missing}; required: {required}")
        return cls(**d)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ViTSpec":
        """A spec for a timm model name (see `spec_names()`), e.g. ``deit_small_patch16_224``.

        Keyword overrides replace fields, e.g. ``num_classes=10``.
        """
        if name not in _PRESETS:
            raise ValueError(f"ViTSpec.from_name: unknown model {name!r}; known: {', '.join(spec_names())}")
        fields = dict(_PRESETS[name], name=name)
        fields.update(overrides)
        return cls(**fields)


def _vit(depth, dim, heads, patch=16, size=224, prefix=1, heads_out=1):
    return dict(depth=depth, embed_dim=dim, num_heads=heads, mlp_hidden=4 * dim, patch_size=patch,
                image_size=(size, size), prefix_tokens=prefix, classifier_heads=heads_out)


_PRESETS: dict[str, dict] = {
    "deit_tiny_patch16_224": _vit(12, 192, 3),
    "deit_small_patch16_224": _vit(12, 384, 6),
    "deit_base_patch16_224": _vit(12, 768, 12),
    "deit_base_patch16_384": _vit(12, 768, 12, size=384),
    "deit_tiny_distilled_patch16_224": _vit(12, 192, 3, prefix=2, heads_out=2),
    "deit_small_distilled_patch16_224": _vit(12, 384, 6, prefix=2, heads_out=2),
    "deit_base_distilled_patch16_224": _vit(12, 768, 12, prefix=2, heads_out=2),
    "vit_tiny_patch16_224": _vit(12, 192, 3),
    "vit_small_patch16_224": _vit(12, 384, 6),
    "vit_base_patch16_224": _vit(12, 768, 12),
    "vit_base_patch32_224": _vit(12, 768, 12, patch=32),
    "vit_large_patch16_224": _vit(24, 1024, 16),
    "vit_large_patch32_224": _vit(24, 1024, 16, patch=32),
}


def spec_names() -> list[str]:
    """Model names `ViTSpec.from_name` knows."""
    return sorted(_PRESETS)
