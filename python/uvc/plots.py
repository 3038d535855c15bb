"""PNG plots of a pruned architecture (like Fig. 5 of the USDC paper) and of a training log.

matplotlib is imported inside the functions, so `import uvc` stays numpy-only. Figures are
drawn on a private Agg canvas: the caller's pyplot state and backend are left alone.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Mapping, Sequence

import numpy as np

from .plan import ArchPlan
from .report import human

__all__ = ["plot_architecture", "plot_training_log", "architecture_figure_px", "TRAINING_LOG_FIGURE_PX"]

_DPI = 100
# (width, height) in pixels of the `plot_training_log` figure.
TRAINING_LOG_FIGURE_PX = (1000, 800)
_MHSA_COLOR, _MLP_COLOR, _TOKEN_COLOR = "#4c72b0", "#dd8452", "#55a868"


def architecture_figure_px(depth: int) -> tuple[int, int]:
    """(width, height) in pixels of the `plot_architecture` figure for a model of ``depth``
    blocks: 70 px per block plus margins, between 900 and 2400 px wide, 600 px high."""
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
        raise ValueError(f"architecture_figure_px: depth must be a positive int, got {depth!r}")
    return min(2400, max(900, 200 + 70 * int(depth))), 600


def _check_path(path, fn: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def _new_figure(width_px: int, height_px: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> None:
    # No bbox_inches="tight": the PNG keeps the documented pixel size.
    fig.savefig(path, format="png", dpi=_DPI)


def _expected_macs(plan: ArchPlan, rates: np.ndarray | None) -> float:
    """MACs of ``plan`` (uvc convention) when each MHSA / MLP part runs with probability
    ``rates[l]`` (always, when None)."""
    from .cost import expected_cost

    x = plan.counts.astype(np.float64).T.copy()  # rows: heads, v_dim, neurons, attn, mlp, tokens
    if rates is not None:
        x[3:5] *= rates.T
    return expected_cost(plan.spec, np.ascontiguousarray(x))


def _check_rates(execution_rates, depth: int) -> np.ndarray | None:
    if execution_rates is None:
        return None
    try:
        rates = np.array(execution_rates, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("plot_architecture: execution_rates must be a float array of shape "
                        f"(depth, 2), got {type(execution_rates).__name__}") from None
    if rates.shape != (depth, 2):
        raise ValueError(f"plot_architecture: execution_rates must have shape ({depth}, 2) "
                         f"(MHSA, MLP rate per layer), got {rates.shape}")
    if not np.all((rates >= 0) & (rates <= 1)):
        raise ValueError("plot_architecture: execution_rates must lie in [0, 1] (no NaN)")
    return rates


def plot_architecture(plan: ArchPlan, path: str | os.PathLike, *, title: str | None = None,
                      dense_plan: ArchPlan | None = None,
                      execution_rates: np.ndarray | Sequence[Sequence[float]] | None = None) -> str | os.PathLike:
    """Saves a PNG of the per-layer architecture of ``plan`` (Fig. 5 of the USDC paper).

    Per layer, one bar for MHSA (kept heads / ``num_heads``, labelled ``h=k``, plus ``v=d``
    when value dims are pruned) and one for the MLP (kept neurons / ``mlp_hidden``,
    labelled with the neuron count). Statically skipped parts are grey, hatched and
    labelled "skipped". When any layer drops tokens, the tokens entering each block are a
    line on the right axis (scaled so that the full token count sits at height 1).

    ``dense_plan``: a reference plan of the same spec (default: the dense model); its bars
    are drawn as dashed outlines and the subtitle gives the MACs of ``plan`` as a share of
    its MACs. ``execution_rates``: float (depth, 2) array of the MHSA / MLP execution rates
    of a dynamic model, annotated ``R=0.75`` on running parts (ignored on skipped ones); the
    subtitle then also gives the expected MACs. MACs use the uvc convention. The PNG is
    `architecture_figure_px` (depth) pixels. Returns ``path``.
    """
    if not isinstance(plan, ArchPlan):
        raise TypeError(f"plot_architecture: plan must be an ArchPlan, got {type(plan).__name__}")
    out = _check_path(path, "plot_architecture")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"plot_architecture: title must be a str or None, got {type(title).__name__}")
    if dense_plan is not None:
        if not isinstance(dense_plan, ArchPlan):
            raise TypeError(f"plot_architecture: dense_plan must be an ArchPlan or None, got {type(dense_plan).__name__}")
        if dense_plan.spec != plan.spec:
            raise ValueError("plot_architecture: dense_plan was built for a different spec than plan")
    spec = plan.spec
    rates = _check_rates(execution_rates, spec.depth)
    reference = dense_plan if dense_plan is not None else ArchPlan.dense(spec)

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = _new_figure(*architecture_figure_px(spec.depth))
    ax = fig.add_subplot()
    x = np.arange(1, spec.depth + 1)
    width = 0.38
    label_size = 8 if spec.depth <= 16 else 7
    skip_style = dict(facecolor="#d9d9d9", hatch="///", edgecolor="#7f7f7f", linewidth=0.8)

    def bar(pos: float, frac: float, color: str, label: str, runs: bool, rate: float | None) -> None:
        if not runs:
            ax.bar(pos, 1.0, width, **skip_style)
            ax.text(pos, 0.5, "skipped", rotation=90, ha="center", va="center", fontsize=label_size, color="#404040")
            return
        ax.bar(pos, frac, width, color=color, edgecolor="black", linewidth=0.5)
        if rate is not None:
            label += f"  R={rate:.2f}"
        ax.text(pos, frac + 0.02, label, rotation=90, ha="center", va="bottom", fontsize=label_size)

    for i, layer in enumerate(plan.layers):
        r = rates[i] if rates is not None else (None, None)
        heads = f"h={len(layer.heads)}" + (f" qk={layer.qk_dim}" if layer.attn and layer.qk_dim < spec.qk_head_dim
                                           else "") + (f" v={layer.v_dim}" if layer.v_dim < spec.v_head_dim else "")
        bar(x[i] - width / 2, len(layer.heads) / spec.num_heads, _MHSA_COLOR, heads, layer.attn, r[0])
        bar(x[i] + width / 2, len(layer.neurons) / spec.mlp_hidden, _MLP_COLOR, str(len(layer.neurons)), layer.mlp, r[1])
        ref = reference.layers[i]
        for pos, frac in ((x[i] - width / 2, len(ref.heads) / spec.num_heads),
                          (x[i] + width / 2, len(ref.neurons) / spec.mlp_hidden)):
            ax.bar(pos, frac, width, fill=False, edgecolor="black", linestyle="--", linewidth=0.8)

    # Room above the tallest bar for the rotated labels.
    top = 1.55 if rates is not None else 1.35
    ax.set_ylim(0, top)
    ax.set_xlim(0.4, spec.depth + 0.6)
    ax.set_xticks(x, [f"L{l}" for l in x])
    ax.set_yticks(np.linspace(0, 1, 5))
    ax.set_ylabel("kept fraction (heads / MLP neurons)")
    ax.set_xlabel("block")
    ax.grid(axis="y", alpha=0.3)

    handles = [Patch(color=_MHSA_COLOR, label=f"MHSA heads (of {spec.num_heads})"),
               Patch(color=_MLP_COLOR, label=f"MLP neurons (of {spec.mlp_hidden})"),
               Patch(fill=False, edgecolor="black", linestyle="--",
                     label="dense" if dense_plan is None else "reference plan")]
    if not all(layer.attn and layer.mlp for layer in plan.layers):
        handles.insert(2, Patch(**skip_style, label="skipped"))
    tokens = np.array([layer.tokens for layer in plan.layers])
    if np.any(tokens < spec.num_tokens):
        ax2 = ax.twinx()
        ax2.plot(x, tokens, color=_TOKEN_COLOR, marker="o", linewidth=1.5)
        ax2.set_ylim(0, top * spec.num_tokens)
        ax2.set_ylabel("tokens entering block", color=_TOKEN_COLOR)
        ax2.tick_params(axis="y", colors=_TOKEN_COLOR)
        handles.append(Line2D([], [], color=_TOKEN_COLOR, marker="o", label=f"tokens (of {spec.num_tokens})"))
    ax.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
              bbox_to_anchor=(0.5, 1.0))

    macs = _expected_macs(plan, None)
    ref_macs = _expected_macs(reference, None)
    share = f"{100 * macs / ref_macs:.1f}% of {'dense' if dense_plan is None else 'reference'}"
    subtitle = f"static: {human(macs, 'MACs')} = {share}"
    if rates is not None:
        dyn = _expected_macs(plan, rates)
        subtitle += f";  with execution rates: {human(dyn, 'MACs')} = {100 * dyn / ref_macs:.1f}%"
    fig.suptitle(f"{title if title is not None else (spec.name or 'architecture')}\n{subtitle}", fontsize=11)
    _save(fig, out)
    return path


# Keys of the logs `uvc.torch.train.fit` writes (`uvc.Solver.stats` for the cost and z).
_TRAINING_KEYS = ("epoch", "loss", "acc", "expected_ratio", "plan_ratio", "z", "budget_ratio")


def _series(records: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the records that hold ``key``."""
    idx, vals = [], []
    for i, r in enumerate(records):
        v = r.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"plot_training_log: records[{i}][{key!r}] must be a finite number, got {v!r}")
        idx.append(i)
        vals.append(float(v))
    return np.array(idx, dtype=np.int64), np.array(vals)


def plot_training_log(records: Sequence[Mapping], path: str | os.PathLike, *,
                      title: str | None = None) -> str | os.PathLike:
    """Saves a PNG of a training log: one dict per epoch (or per logging step).

    Keys read (each optional per record; a missing or None value is skipped): ``epoch``
    (x axis; the record index when absent), ``loss`` and ``acc`` (top panel, accuracy on
    the right axis), ``expected_ratio`` / ``plan_ratio`` (MACs kept as a fraction of the
    dense MACs; middle panel, with ``budget_ratio`` as a dashed line) and ``z`` (the budget's dual
    variable; bottom panel). Panels without any data are left out. The PNG is
    `TRAINING_LOG_FIGURE_PX` pixels. Returns ``path``.
    """
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
        raise TypeError(f"plot_training_log: records must be a list of dicts, got {type(records).__name__}")
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise TypeError(f"plot_training_log: records[{i}] must be a dict, got {type(r).__name__}")
    out = _check_path(path, "plot_training_log")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"plot_training_log: title must be a str or None, got {type(title).__name__}")
    series = {k: _series(records, k) for k in _TRAINING_KEYS}
    if not any(len(series[k][0]) for k in _TRAINING_KEYS[1:]):
        raise ValueError(f"plot_training_log: records hold none of the keys {list(_TRAINING_KEYS[1:])}")
    ep_idx, ep_vals = series["epoch"]
    if len(ep_idx) and len(ep_idx) != len(records):
        raise ValueError("plot_training_log: 'epoch' must be in every record or in none")
    xs = ep_vals if len(ep_idx) else np.arange(len(records), dtype=np.float64)

    panels = [keys for keys in (("loss", "acc"), ("expected_ratio", "plan_ratio", "budget_ratio"), ("z",))
              if any(len(series[k][0]) for k in keys)]
    fig = _new_figure(*TRAINING_LOG_FIGURE_PX)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]

    def curve(ax, key: str, label: str, **style) -> None:
        idx, vals = series[key]
        if len(idx):
            style.setdefault("marker", "o" if len(idx) < 40 else None)
            ax.plot(xs[idx], vals, label=label, markersize=3, **style)

    for ax, keys in zip(axes, panels):
        ax.grid(alpha=0.3)
        if keys[0] == "loss":
            curve(ax, "loss", "loss", color="#4c72b0")
            ax.set_ylabel("loss", color="#4c72b0")
            if len(series["acc"][0]):
                acc_ax = ax.twinx()
                curve(acc_ax, "acc", "accuracy", color="#c44e52")
                acc_ax.set_ylabel("accuracy", color="#c44e52")
            ax.set_title("task loss and accuracy", fontsize=10)
        elif keys[0] == "expected_ratio":
            curve(ax, "expected_ratio", "expected (relaxed)", color="#4c72b0")
            curve(ax, "plan_ratio", "exact (current plan)", color="#dd8452")
            curve(ax, "budget_ratio", "budget", color="black", linestyle="--", marker=None)
            ax.set_ylabel("MACs / dense MACs")
            ax.legend(fontsize=8)
            ax.set_title("cost ratio vs budget", fontsize=10)
        else:
            curve(ax, "z", "z", color="#55a868")
            ax.set_ylabel("z (budget dual)")
            ax.set_title("budget dual variable z", fontsize=10)
    axes[-1].set_xlabel("epoch" if len(ep_idx) else "record")
    if title is not None:
        fig.suptitle(title, fontsize=11)
    _save(fig, out)
    return path
