/// The Gumbel-softmax relaxation of a categorical draw (Jang et al. 2017; Maddison et al. 2017):
/// `y = softmax((logits + g) / τ)` with `g` i.i.d. standard Gumbel noise. Its argmax is an exact
/// sample of `softmax(logits)`; `y` is the differentiable surrogate used in the backward pass.
public enum GumbelSoftmax {
    /// Standard Gumbel noise from a uniform draw `u` in (0, 1).
    public static func noise(_ u: Double) -> Double { -naturalLog(-naturalLog(u)) }

    /// Writes `softmax((logits + noise) / tau)` into `soft` (all three of the same length ≥ 1).
    public static func forward(logits: UnsafeBufferPointer<Double>, noise: UnsafeBufferPointer<Double>,
                               tau: Double, into soft: UnsafeMutableBufferPointer<Double>) {
        precondition(logits.count >= 1 && noise.count == logits.count && soft.count == logits.count && tau > 0)
        var top = -Double.infinity
        for i in logits.indices { top = max(top, (logits[i] + noise[i]) / tau) }
        var total = 0.0
        for i in logits.indices {
            // Shifting by the largest term keeps every exponent ≤ 0.
            soft[i] = exponential((logits[i] + noise[i]) / tau - top)
            total += soft[i]
        }
        for i in soft.indices { soft[i] /= total }
    }

    /// The vector-Jacobian product of `forward`: given `upstream` = ∂L/∂y, writes ∂L/∂logits,
    /// `(1/τ) · y_i · (upstream_i − Σ_j y_j · upstream_j)`. Noise does not depend on the logits.
    public static func backward(soft: UnsafeBufferPointer<Double>, tau: Double,
                                upstream: UnsafeBufferPointer<Double>,
                                into gradient: UnsafeMutableBufferPointer<Double>) {
        precondition(upstream.count == soft.count && gradient.count == soft.count && tau > 0)
        var mean = 0.0
        for i in soft.indices { mean += soft[i] * upstream[i] }
        for i in soft.indices { gradient[i] = soft[i] * (upstream[i] - mean) / tau }
    }
}
