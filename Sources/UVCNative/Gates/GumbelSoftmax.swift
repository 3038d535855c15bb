/// The Gumbel-softmax relaxation of a categorical draw (Jang et al. 2017; Maddison et al. 2017):
/// `y = softmax((logits + g) / τ)` with `g` i.i.d. standard Gumbel noise. Its argmax is an exact
/// sample of `softmax(logits)`; `y` is the differentiable surrogate used in the backward pass.
/// A gate has two classes (skip, run) with logits (0, d): y_run = σ((d + g₁ − g₀) / τ), which
/// `GateSampler.gumbel` computes in that closed form.
public enum GumbelSoftmax {
    /// Standard Gumbel noise from a uniform draw `u` in (0, 1).
    public static func noise(_ u: Double) -> Double { -naturalLog(-naturalLog(u)) }
}
