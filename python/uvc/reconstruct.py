"""Least-squares reconstruction of a pruned linear layer, on numpy arrays (the Swift core does
the products with OpenBLAS and the solves with its LAPACK).

For a layer y = x Wᵀ + b whose input columns outside ``kept`` are removed, the kept weights
(and the bias, through a column of ones in x) that best reproduce the dense outputs Y on
calibration inputs X solve the ridge problem

    min ‖X_S W_Sᵀ − Y‖² + λ‖W_S‖²,   W_Sᵀ = (X_SᵀX_S + λI)⁻¹ X_SᵀY,

with λ = ``ridge`` × the mean diagonal of X_SᵀX_S. Only the Gram matrices XᵀX (d × d) and
XᵀY (d × m) are kept, summed over batches in float64, so the calibration set can be any size:

    xtx, xty = gram(x_batch, y_batch)                 # the first batch
    gram(x_batch, y_batch, xtx, xty)                  # each further batch, in place
    w_t = ridge_solve(xtx, xty, kept)                 # (len(kept), m): the new W_Sᵀ
"""
from __future__ import annotations

import numpy as np

from ._core import native

__all__ = ["gram", "ridge_solve", "SOLVE_METHODS"]

# What `ridge_solve` reports it used: Cholesky, or an eigen-decomposition when the system is not
# positive definite in floating point (the minimum-norm solution).
SOLVE_METHODS = ("cholesky", "eigen")


def _matrix(name: str, value, dtypes=(np.float32, np.float64)) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype not in dtypes:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-d (rows, columns), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def gram(x, y, xtx: np.ndarray | None = None, xty: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Adds XᵀX and XᵀY of one batch to ``xtx`` (d, d) and ``xty`` (d, m), float64, allocated
    (zeros) when None; returns them.

    ``x``: (n, d) inputs and ``y``: (n, m) targets, both float32 or both float64 (float32 is
    summed in float64). NaN or infinite values raise ValueError naming the argument.
    """
    x, y = _matrix("x", x), _matrix("y", y)
    if y.dtype != x.dtype:
        raise TypeError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype}")
    d, m = x.shape[1], y.shape[1]
    xtx = np.zeros((d, d)) if xtx is None else xtx
    xty = np.zeros((d, m)) if xty is None else xty
    native.gram_accumulate(x, y, xtx, xty)
    return xtx, xty


def ridge_solve(xtx, xty, kept, ridge: float = 1e-3, *, return_method: bool = False):
    """The ridge solution W_Sᵀ (len(kept), m) for the input columns ``kept`` (increasing
    indices) of the Gram matrices `gram` built. ``ridge`` ≥ 0 is relative to the mean diagonal
    of X_SᵀX_S. With ``return_method`` also the method used (see `SOLVE_METHODS`)."""
    xtx, xty = _matrix("xtx", xtx, (np.float64,)), _matrix("xty", xty, (np.float64,))
    kept = np.asarray(kept)
    if kept.dtype.kind not in "iu":
        raise TypeError(f"kept must be integer column indices, got dtype {kept.dtype}")
    kept = np.ascontiguousarray(kept, dtype=np.int64).reshape(-1)
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float, np.floating)):
        raise TypeError(f"ridge must be a number, got {type(ridge).__name__}")
    out = np.empty((kept.size, xty.shape[1]))
    method = native.ridge_solve(xtx, xty, kept, float(ridge), out)
    return (out, SOLVE_METHODS[int(method)]) if return_method else out
