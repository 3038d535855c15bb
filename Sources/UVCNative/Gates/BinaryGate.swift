/// How a skip gate with log-odds `d` (logit of "run" minus logit of "skip") becomes this
/// step's keep weight. Each relaxation gives a forward value, a soft surrogate with its
/// derivative in `d`, the probability the budget term uses, and the eval-time decision.
public enum GateSampler: Int, CaseIterable, Sendable {
    /// Two-class Gumbel-softmax on the logits (0, d) with temperature τ (UVC's `use_gumbel`).
    case gumbel = 0
    /// The binary-concrete form: σ((d + logistic noise) / τ). Same distribution as `gumbel`
    /// (a difference of two Gumbels is logistic), one uniform draw instead of two.
    case sigmoid = 1
    /// Deterministic soft-L0 gate `r² / (r² + ε)`, r = max(d, 0) (UVC's `use_gumbel=0` path, whose
    /// ε decays each epoch). A gate driven to d ≤ 0 has zero gradient and stays shut.
    case softL0 = 2

    public var name: String { ["gumbel", "sigmoid", "softl0"][rawValue] }
}

/// One gate's draw: the value the forward pass uses and the soft surrogate behind its gradient.
public struct GateSample: Hashable, Sendable {
    /// Keep weight used in the forward pass (0 or 1 when straight-through).
    public var value: Double
    /// The relaxed sample y the backward pass differentiates.
    public var soft: Double
    /// ∂y/∂d.
    public var slope: Double
}

extension GateSampler {
    /// Draws one gate. `rng` is advanced by 2 (gumbel), 1 (sigmoid) or 0 (softL0) words.
    public func sample(logit d: Double, tau: Double, eps: Double, straightThrough: Bool,
                       rng: inout Xoshiro256StarStar) -> GateSample {
        let soft: Double
        let slope: Double
        switch self {
        case .gumbel:
            // softmax((0, d) + (g0, g1)) / τ)₁ in closed form: σ((d + g1 − g0) / τ), slope y(1 − y)/τ.
            let g0 = GumbelSoftmax.noise(rng.nextOpenUnit()), g1 = GumbelSoftmax.noise(rng.nextOpenUnit())
            soft = logistic((d + (g1 - g0)) / tau)
            slope = soft * (1 - soft) / tau
        case .sigmoid:
            let u = rng.nextOpenUnit()
            soft = logistic((d + naturalLog(u) - naturalLog1p(-u)) / tau)
            slope = soft * (1 - soft) / tau
        case .softL0:
            soft = probability(logit: d, eps: eps)
            slope = probabilitySlope(logit: d, eps: eps)
        }
        // Straight-through: the forward value is the hard decision, the gradient that of `soft`.
        // A soft value of exactly 1/2 goes to "skip", as argmax picks the first of two ties.
        let value = straightThrough ? (soft > 0.5 ? 1.0 : 0.0) : soft
        return GateSample(value: value, soft: soft, slope: slope)
    }

    /// Probability that the part runs: σ(d) for the random samplers (the exact chance that the
    /// hard sample is 1), the gate value itself for softL0. This is what the budget term counts.
    public func probability(logit d: Double, eps: Double) -> Double {
        switch self {
        case .gumbel, .sigmoid:
            return logistic(d)
        case .softL0:
            let r = max(d, 0)
            return r * r / (r * r + eps)
        }
    }

    /// ∂probability/∂d.
    public func probabilitySlope(logit d: Double, eps: Double) -> Double {
        switch self {
        case .gumbel, .sigmoid:
            let p = logistic(d)
            return p * (1 - p)
        case .softL0:
            guard d > 0 else { return 0 }
            // 2dε/q² as (2d · ε/q)/q: q² underflows to 0 when ε is near its 1e-300 floor.
            let q = d * d + eps
            return 2 * d * (eps / q) / q
        }
    }

    /// The eval-time and export decision: run iff the run logit beats the skip logit (d > 0);
    /// for softL0, iff the gate value exceeds 1/2.
    public func decision(logit d: Double, eps: Double) -> Bool {
        switch self {
        case .gumbel, .sigmoid: d > 0
        case .softL0: probability(logit: d, eps: eps) > 0.5
        }
    }
}
