"""One-shot compression without a training pipeline: score every head, value dim and MLP
neuron on a few calibration batches, allocate the budget across layers and axes with the cost
model, export, then refit the kept columns of every ``attn.proj`` and ``mlp.fc2`` (and their
biases) by ridge least squares so that each layer reproduces the dense model's output
(`uvc.reconstruct`, solved in the Swift core with OpenBLAS/LAPACK).

    slim = uvc.torch.prune(model, 0.5, calibration)     # a SlimViT at ≤ 50 % of the MACs

Importance criteria (one interface, several criteria, as Torch-Pruning's ``importance``):

* ``"activation"`` (default, no labels): E[a_j²]·‖W_{:,j}‖², the mean energy input column j of
  ``attn.proj`` / ``mlp.fc2`` puts into the residual stream over the calibration tokens.
* ``"magnitude"``: ‖W_{:,j}‖² alone (no data needed for the scores).
* ``"taylor"`` (needs labels): |Σ a_j·∂L/∂a_j|, the first-order change of the loss when column j
  is removed, summed over the calibration batches.

A head's score is the sum over its value dims; a layer's value width is shared by its kept
heads (the export stays one attention call per layer), so it drops the same number of dims,
each head its lowest-scoring ones. For a price λ every layer keeps what is worth more than λ
per MAC (the best head count × value width, the neurons), a part with nothing worth keeping is
skipped; λ is bisected until the exact MACs of the plan meet the budget, then a greedy fill spends
what the price's jumps left (one neuron, value dim or head a step, by score per MAC, while it
fits), so the plan lands at the budget rather than a part's size under it. Activation and Taylor
scores share a unit across axes (output energy, loss); magnitudes are divided by each kind's
mean.

Reconstruction runs layer after layer: the calibration inputs of layer l come from the model
already pruned and refit above it, the targets from the dense model on the same images.
"""
from __future__ import annotations

import time
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .. import cost
from ..plan import PLAN_ROW, ArchPlan, LayerPlan
from ..reconstruct import gram, ridge_solve
from ..settings import PRUNE_CRITERIA as IMPORTANCE
from .introspect import blocks, check_supported, spec_from_model
from .slim import SlimViT

__all__ = ["prune", "importance", "allocate", "reconstruct", "IMPORTANCE"]


class _Stop(Exception):
    """Ends a forward pass once the hooked layer has been seen."""


def _batches(loader: Iterable, limit: int | None, device) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The calibration batches (images, labels or None), up to ``limit`` images."""
    out, seen = [], 0
    for item in loader:
        x, y = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise TypeError(f"calibration: expected batches of images (B, C, H, W) or (images, labels), got "
                            f"{type(x).__name__}{'' if not isinstance(x, torch.Tensor) else tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"calibration: batch {len(out)} holds NaN or infinite pixel values")
        if limit is not None and seen + len(x) > limit:
            x, y = x[:limit - seen], None if y is None else y[:limit - seen]
        out.append((x.to(device), None if y is None else y.to(device)))
        seen += len(x)
        if limit is not None and seen >= limit:
            break
    if not out or seen == 0:
        raise ValueError("calibration: the loader yielded no images")
    return out


@torch.no_grad()
def _energy(model: nn.Module, batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block, the mean square of each input column of attn.proj and mlp.fc2 over every token."""
    parts = blocks(model)
    sums = [[torch.zeros(p.proj.in_features, device=p.proj.weight.device),
             torch.zeros(p.fc2.in_features, device=p.fc2.weight.device)] for p in parts]
    count = [0]

    def hook(i, k):
        def f(_module, inputs):
            a = inputs[0].detach().float()
            sums[i][k] += a.pow(2).reshape(-1, a.shape[-1]).sum(0)
            if i == 0 and k == 0:
                count[0] += a.shape[0] * a.shape[1]
        return f

    handles = [h for i, p in enumerate(parts) for h in (p.proj.register_forward_pre_hook(hook(i, 0)),
                                                          p.fc2.register_forward_pre_hook(hook(i, 1)))]
    try:
        for x, _ in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [(s[0] / count[0], s[1] / count[0]) for s in sums]


def _taylor(model: nn.Module, batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block, |Σ a_j ∂L/∂a_j| of each input column of attn.proj and mlp.fc2 (cross-entropy)."""
    if any(y is None for _, y in batches):
        raise ValueError("importance='taylor' needs labels: give the calibration loader (images, labels) batches")
    parts = blocks(model)
    masks = [[torch.ones(p.proj.in_features, device=p.proj.weight.device, requires_grad=True),
              torch.ones(p.fc2.in_features, device=p.fc2.weight.device, requires_grad=True)] for p in parts]
    out = [[torch.zeros_like(m[0]), torch.zeros_like(m[1])] for m in masks]

    def hook(m):
        return lambda _module, inputs: (inputs[0] * m.to(inputs[0].dtype),)

    handles = [h for i, p in enumerate(parts) for h in (p.proj.register_forward_pre_hook(hook(masks[i][0])),
                                                          p.fc2.register_forward_pre_hook(hook(masks[i][1])))]
    try:
        for x, y in batches:
            logits = model(x)
            logits = logits[0] if isinstance(logits, tuple) else logits
            grads = torch.autograd.grad(nn.functional.cross_entropy(logits, y), [m for pair in masks for m in pair])
            for i in range(len(parts)):
                out[i][0] += grads[2 * i].abs()
                out[i][1] += grads[2 * i + 1].abs()
    finally:
        for h in handles:
            h.remove()
    return [(a.detach(), b.detach()) for a, b in out]


def importance(model: nn.Module, batches=None, criterion: str = "activation") -> dict[str, np.ndarray]:
    """Scores of every group, float64: ``heads`` (depth, heads), ``dims`` (depth, heads,
    v_head_dim), ``neurons`` (depth, mlp_hidden), by ``criterion`` (see `IMPORTANCE`).
    ``batches``: a list of (images, labels or None) on the model's device (not used by
    ``"magnitude"``)."""
    if criterion not in IMPORTANCE:
        raise ValueError(f"importance: criterion must be one of {IMPORTANCE}, got {criterion!r}")
    spec = spec_from_model(model)
    parts = blocks(model)
    w = [(p.proj.weight.detach().float().pow(2).sum(0), p.fc2.weight.detach().float().pow(2).sum(0)) for p in parts]
    if criterion == "magnitude":
        cols = w
    elif criterion == "activation":
        cols = [(e0 * a, e1 * b) for (e0, e1), (a, b) in zip(_energy(model, batches), w)]
    else:
        cols = _taylor(model, batches)
    dims = np.stack([c[0].cpu().double().numpy().reshape(spec.num_heads, spec.v_head_dim) for c in cols])
    neurons = np.stack([c[1].cpu().double().numpy() for c in cols])
    if not (np.isfinite(dims).all() and np.isfinite(neurons).all()):
        raise ValueError(f"importance: the {criterion} scores are not finite (the model produced NaN or infinite "
                         "activations on the calibration images)")
    return {"heads": dims.sum(-1), "dims": dims, "neurons": neurons}


def allocate(spec, scores: dict[str, np.ndarray], budget: float, *, convention: str = "uvc",
             normalise: bool = False) -> ArchPlan:
    """The plan that keeps, in every layer, what is worth more than a price λ per MAC, with λ
    bisected so that the plan's exact MACs are at most ``budget`` × the dense MACs, then filled
    greedily up to the budget (see the module doc). ``normalise``: divide each kind's scores by
    its mean first (for magnitudes)."""
    if not 0 < budget <= 1:
        raise ValueError(f"allocate: budget must be a fraction of the dense MACs in (0, 1], got {budget}")
    dims, neurons = scores["dims"].astype(np.float64), scores["neurons"].astype(np.float64)
    if normalise:
        dims, neurons = dims / max(dims.mean(), 1e-300), neurons / max(neurons.mean(), 1e-300)
    d, h, v, m = spec.depth, spec.num_heads, spec.v_head_dim, spec.mlp_hidden
    conv = cost.as_convention(convention)
    dense = cost.count(spec, None, conv)
    target = budget * dense.macs

    def layer_macs(heads: int, width: int, hidden: int) -> np.ndarray:
        row = {**cost._dense_layer(spec), "heads": heads, "v_dim": width, "neurons": hidden, "attn": int(heads > 0),
               "mlp": int(hidden > 0)}
        counts = np.tile(np.array([row[name] for name in PLAN_ROW]), (d, 1))
        return cost._count_counts(spec, counts.astype(np.int64), conv).layers.sum(axis=1)

    # MACs of one layer by (kept heads, value width), MLP off; and per MLP neuron (the MLP is linear in it).
    attn = np.zeros((d, h + 1, v + 1))
    for k in range(1, h + 1):
        for wd in range(1, v + 1):
            attn[:, k, wd] = layer_macs(k, wd, 0)
    per_neuron = (layer_macs(0, 0, 2) - layer_macs(0, 0, 1))
    mlp_fixed = layer_macs(0, 0, 1) - per_neuron
    # Value of keeping the best k heads at width w (each head its best w dims): (d, h, v), [k-1, w-1].
    head_value = np.cumsum(-np.sort(-dims, axis=2), axis=2)
    kept_value = np.cumsum(-np.sort(-head_value, axis=1), axis=1)
    order = np.argsort(-neurons, axis=1, kind="stable")
    neuron_sorted = np.take_along_axis(neurons, order, axis=1)

    def plan_at(price: float) -> list[tuple]:
        rows = []
        for l in range(d):
            gain = kept_value[l] - price * attn[l, 1:, 1:]
            k, wd = np.unravel_index(int(np.argmax(gain)), gain.shape)
            best = (k + 1, wd + 1) if gain[k, wd] > 0 else (0, 0)
            keep = int(np.sum(neuron_sorted[l] > price * per_neuron[l]))
            if keep and neuron_sorted[l, :keep].sum() - price * (per_neuron[l] * keep + mlp_fixed[l]) <= 0:
                keep = 0
            rows.append((*best, keep))
        return rows

    def macs(rows) -> float:
        return cost.count(spec, _plan(spec, rows, dims, order), conv).macs

    lo, hi = 0.0, 1.0
    while macs(plan_at(hi)) > target:
        hi *= 4
        if hi > 1e300:
            raise ValueError(f"allocate: no plan reaches {budget} of the dense MACs")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs(plan_at(mid)) <= target else (mid, hi)
    rows = [list(r) for r in plan_at(hi)]

    # The plan at a price jumps (a layer drops a head, or a whole part, at once), so it can land
    # well under the budget. Fill: while a step fits, take the one that gains the most score per
    # MAC: one more neuron, value dim (in every kept head) or head (at the layer's width).
    def steps(l: int):
        k, wd, keep = rows[l]
        if keep < m:
            yield (neuron_sorted[l, keep], per_neuron[l] + (mlp_fixed[l] if keep == 0 else 0.0), (k, wd, keep + 1))
        if k == 0:
            yield (kept_value[l, 0, 0], attn[l, 1, 1], (1, 1, keep))
            return
        if wd < v:
            yield (kept_value[l, k - 1, wd] - kept_value[l, k - 1, wd - 1], attn[l, k, wd + 1] - attn[l, k, wd],
                   (k, wd + 1, keep))
        if k < h:
            yield (kept_value[l, k, wd - 1] - kept_value[l, k - 1, wd - 1], attn[l, k + 1, wd] - attn[l, k, wd],
                   (k + 1, wd, keep))

    current, refused = macs(rows), set()
    while True:
        best = max(((gain / added, l, row) for l in range(d) for gain, added, row in steps(l)
                    if gain > 0 and added <= target - current and (l, row) not in refused), default=None)
        if best is None:
            break
        _, l, row = best
        before, rows[l] = rows[l], list(row)
        after = macs(rows)
        if after > target:  # the tables' sum is exact for these counts; guard anyway
            rows[l] = before
            refused.add((l, row))
        else:
            current = after
    return _plan(spec, rows, dims, order)


def _plan(spec, rows, dims: np.ndarray, neuron_order: np.ndarray) -> ArchPlan:
    layers = []
    for l, (k, wd, keep) in enumerate(rows):
        if k:
            value = -np.sort(-dims[l], axis=1)[:, :wd].sum(1)
            heads = tuple(sorted(np.argsort(-value, kind="stable")[:k].tolist()))
            v_index = tuple(tuple(sorted(np.argsort(-dims[l, j], kind="stable")[:wd].tolist())) for j in heads)
        else:
            heads, v_index = (), ()
        neurons = tuple(sorted(neuron_order[l, :keep].tolist()))
        layers.append(LayerPlan(heads=heads, v_index=v_index, neurons=neurons, tokens=spec.num_tokens,
                                attn=bool(k), mlp=bool(keep)))
    return ArchPlan(spec, tuple(layers))


@torch.no_grad()
def _capture(model: nn.Module, module: nn.Module, x: torch.Tensor, output: bool) -> torch.Tensor:
    """The input (or output) of ``module`` when ``model`` runs on ``x``, flattened to rows."""
    seen = []

    def hook(_m, inputs, out=None):
        seen.append((out if output else inputs[0]).detach())
        raise _Stop

    handle = (module.register_forward_hook(hook) if output else
              module.register_forward_pre_hook(lambda m, i: hook(m, i)))
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    t = seen[0]
    return t.reshape(-1, t.shape[-1])


@torch.no_grad()
def reconstruct(slim: SlimViT, dense: nn.Module, batches, *, ridge: float = 1e-3, progress: bool = True) -> dict:
    """Refits, block after block, the kept columns and bias of each ``attn.proj`` and
    ``mlp.fc2`` of ``slim`` so that its output on the calibration images is as close as
    possible (ridge least squares) to the dense layer's. Returns per-layer relative squared
    errors before and after, ‖XW − Y‖² / ‖Y‖², computed from the Gram matrices (one pass over
    the calibration images per layer)."""
    from tqdm.auto import tqdm
    parts = blocks(dense)
    report = []
    todo = [(j, l, name) for j, l in enumerate(slim.block_index) for name in ("attn", "mlp")
            if getattr(slim.blocks[j], name) is not None]
    images = sum(len(x) for x, _ in batches)
    for j, l, name in tqdm(todo, desc="reconstruct", disable=not progress, leave=False):
        layer = slim.blocks[j].attn.proj if name == "attn" else slim.blocks[j].mlp.fc2
        target = parts[l].proj if name == "attn" else parts[l].fc2
        k = layer.in_features
        bias = layer.bias is not None
        xtx = np.zeros((k + bias, k + bias))
        xty = np.zeros((k + bias, layer.out_features))
        yty = 0.0
        for x, _ in batches:
            a = _capture(slim, layer, x, output=False).float()
            y = _capture(dense, target, x, output=True).float()
            yty += y.double().pow(2).sum().item()
            if bias:
                a = torch.cat([a, torch.ones(len(a), 1, device=a.device, dtype=a.dtype)], dim=1)
            gram(a.cpu().numpy(), y.cpu().numpy(), xtx, xty)
        before = _residual(_weights(layer), xtx, xty, yty)
        solution = ridge_solve(xtx, xty, np.arange(k + bias), ridge)
        w = torch.as_tensor(solution, dtype=layer.weight.dtype, device=layer.weight.device)
        layer.weight.copy_(w[:k].T)
        if bias:
            layer.bias.copy_(w[k])
        after = _residual(_weights(layer), xtx, xty, yty)  # the weights as stored, in their dtype
        total = max(yty, 1e-300)
        report.append({"layer": l, "part": name, "rel_error_before": before / total, "rel_error_after": after / total,
                       "images": images})
    return {"layers": report}


def _weights(layer: nn.Linear) -> np.ndarray:
    """Wᵀ of ``layer`` (in × out), with the bias as a last row when it has one, float64."""
    w = layer.weight.detach().double().T
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().double()[None]], dim=0)
    return w.cpu().numpy()


def _residual(w: np.ndarray, xtx: np.ndarray, xty: np.ndarray, yty: float) -> float:
    """‖X W − Y‖² from the Gram matrices: tr(Wᵀ XᵀX W) − 2 tr(Wᵀ XᵀY) + ‖Y‖²."""
    return max(0.0, float(np.einsum("ij,ij->", w, xtx @ w) - 2 * np.einsum("ij,ij->", w, xty) + yty))


def prune(model: nn.Module, budget: float, calibration: Iterable, *, criterion: str = "activation",
          images: int | None = 1024, reconstruct_weights: bool = True, ridge: float = 1e-3,
          convention: str = "uvc", progress: bool = True) -> SlimViT:
    """A `SlimViT` of ``model`` (a timm ViT, unchanged) at ≤ ``budget`` × its dense MACs, from
    ``calibration`` (an iterable of image batches or (images, labels) batches; the first
    ``images`` images are used) without training.

    Args:
        criterion: the importance of each group (`IMPORTANCE`; "taylor" needs labels).
        reconstruct_weights: refit the kept proj / fc2 columns and biases by least squares.
        ridge: the ridge of those fits, relative to the mean diagonal of each Gram matrix.
        convention: what the budget's MACs count (`uvc.CONVENTIONS`).

    The result carries ``slim.prune_report``: the plan's MACs ratio, the time of each phase (s)
    and the per-layer relative errors before and after reconstruction.
    """
    check_supported(model)
    if not 0 < budget <= 1:
        raise ValueError(f"prune: budget must be a fraction of the dense MACs in (0, 1], got {budget!r}")
    device = model.patch_embed.proj.weight.device
    training = model.training
    model.eval()
    start = time.perf_counter()
    batches = _batches(calibration, images, device)
    spec = spec_from_model(model)
    scores = importance(model, batches, criterion)
    scored = time.perf_counter()
    plan = allocate(spec, scores, budget, convention=convention, normalise=criterion == "magnitude")
    allocated = time.perf_counter()
    slim = SlimViT.from_timm(model, plan).eval()
    rows = sum(len(x) for x, _ in batches) * spec.num_tokens
    widest = max(max((l.v_dim * len(l.heads) for l in plan.layers), default=0),
                 max((len(l.neurons) for l in plan.layers), default=0)) + 1
    report = {"layers": []}
    if reconstruct_weights:
        if rows < widest:
            raise ValueError(f"prune: {rows} calibration rows (images × {spec.num_tokens} tokens) are fewer than the "
                             f"{widest} columns of the widest layer to refit; give at least "
                             f"{-(-widest // spec.num_tokens)} images")
        report = reconstruct(slim, model, batches, ridge=ridge, progress=progress)
    done = time.perf_counter()
    model.train(training)
    conv = cost.as_convention(convention)
    slim.prune_report = {
        "criterion": criterion, "budget": budget, "ratio": cost.count(spec, plan, conv).macs / cost.count(spec, None, conv).macs,
        "images": sum(len(x) for x, _ in batches), "seconds": {"scores": scored - start,
                                                               "allocation": allocated - scored,
                                                               "reconstruction": done - allocated},
        **report}
    return slim
