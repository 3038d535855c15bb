"""Plain-text tables of costs and architectures (no torch, no plotting)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .cost import CostReport
    from .plan import ArchPlan

__all__ = ["table", "cost_table", "human"]


def human(n: float, unit: str = "") -> str:
    """12_345_678 -> '12.35 M'."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    """A fixed-width text table; ``align`` is one 'l'/'r' per column (default: first left)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)
    fmt = lambda r: "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(cells[0]), rule] + [fmt(r) for r in cells[1:]])


def cost_table(report: "CostReport", plan: "ArchPlan") -> str:
    """Per-layer kept structure and MACs, then totals in MACs and FLOPs."""
    spec = plan.spec
    rows = []
    for i, (layer, macs) in enumerate(zip(plan.layers, report.layer_macs)):
        rows.append([i, f"{len(layer.heads)}/{spec.num_heads}" if layer.attn else "skip",
                     f"{layer.qk_dim}/{spec.qk_head_dim}" if layer.attn else "-",
                     f"{layer.v_dim}/{spec.v_head_dim}" if layer.attn else "-",
                     f"{len(layer.neurons)}/{spec.mlp_hidden}" if layer.mlp else "skip",
                     layer.tokens, human(macs), f"{100 * macs / report.macs:.1f}%"])
    body = table(["layer", "heads", "qk dim", "v dim", "mlp", "tokens", "MACs", "share"], rows)
    g = dict(zip(("patch_embed", "final_norm", "head"), report.globals))
    extras = f"patch embed {human(g['patch_embed'], 'MACs')}, final norm {human(g['final_norm'], 'MACs')}, head {human(g['head'], 'MACs')}"
    total = f"total: {report.macs / 1e9:.4f} GMACs = {report.flops / 1e9:.4f} GFLOPs (2 FLOPs per MAC)"
    return f"{body}\n{extras}\n{total}"
