/// Group-level dynamic gates, forward and backward: the reference the torch forward pass is
/// checked against.
///
/// Per sample b and gate column c (e.g. c = 2l for the MHSA and 2l + 1 for the MLP of layer l)
/// the gate network gives log-odds d[b, c] of running the part (a run/skip logit pair reduces to
/// its difference). Each sub-group k pools its members' log-odds by their mean,
/// D[k, c] = mean_{b ∈ k} d[b, c], and takes one decision for all of them:
///
///     soft[k, c] = σ((D[k, c] + noise[k, c]) / τ)        (two-class Gumbel-softmax of "run")
///     gate[b, c] = [soft > ½] straight-through, else soft  (for every b in group k)
///     prob[b, c] = σ(D[k, c])                             (P(gate = 1): what the budget counts)
///
/// Eval mode is noise 0 with straight-through: the part runs iff D > 0. The backward pass
/// differentiates `soft` for the gate (straight-through) and σ(D) for the probability, and
/// hands each member 1/|k| of its group's gradient.
public struct GroupGates {
    public let batch: Int
    public let columns: Int
    public let groupCount: Int
    private let groups: UnsafeBufferPointer<Int64>
    private let sizes: [Int]

    /// `groups`: each sample's group id, in 0..<`groupCount`; a group may be empty (its noise
    /// row is then unused).
    public init(groups: UnsafeBufferPointer<Int64>, groupCount: Int, columns: Int) throws(UVCError) {
        try require(groups.count >= 1, "groups", "expected at least one sample")
        // A partition never has more groups than samples; the bound also keeps `sizes` small.
        try require(groupCount >= 1 && groupCount <= groups.count, "noise",
                    "expected one row per group, 1...\(groups.count) rows for \(groups.count) samples, got \(groupCount)")
        var sizes = [Int](repeating: 0, count: groupCount)
        for (b, g) in groups.enumerated() {
            try require(g >= 0 && g < Int64(groupCount), "groups",
                        "sample \(b) is in group \(g), expected 0...\(groupCount - 1) (one noise row per group)")
            sizes[Int(g)] += 1
        }
        self.batch = groups.count
        self.columns = columns
        self.groupCount = groupCount
        self.groups = groups
        self.sizes = sizes
    }

    /// Checks the logits and noise (finite) and τ (finite, > 0).
    public func validate(logits: UnsafeBufferPointer<Double>, noise: UnsafeBufferPointer<Double>,
                         tau: Double) throws(UVCError) {
        try require(tau.isFinite && tau > 0, "tau", "must be finite and > 0, got \(tau)")
        for (i, v) in logits.enumerated() {
            try require(v.isFinite, "logits", "value at (\(i / columns), \(i % columns)) is \(v), expected finite")
        }
        for (i, v) in noise.enumerated() {
            try require(v.isFinite, "noise", "value at (\(i / columns), \(i % columns)) is \(v), expected finite")
        }
    }

    /// Mean log-odds of each group, `groupCount × columns`.
    private func pooled(_ logits: UnsafeBufferPointer<Double>) -> [Double] {
        var out = [Double](repeating: 0, count: groupCount * columns)
        for b in 0..<batch {
            let k = Int(groups[b])
            for c in 0..<columns { out[k * columns + c] += logits[b * columns + c] }
        }
        for k in 0..<groupCount where sizes[k] > 0 {
            for c in 0..<columns { out[k * columns + c] /= Double(sizes[k]) }
        }
        return out
    }

    /// Writes each sample's gate value and run probability (`batch × columns` each).
    public func forward(logits: UnsafeBufferPointer<Double>, noise: UnsafeBufferPointer<Double>, tau: Double,
                        straightThrough: Bool, gates: UnsafeMutableBufferPointer<Double>,
                        probs: UnsafeMutableBufferPointer<Double>) {
        let pooled = pooled(logits)
        for b in 0..<batch {
            let k = Int(groups[b])
            for c in 0..<columns {
                let i = k * columns + c
                let soft = logistic((pooled[i] + noise[i]) / tau)
                // Ties go to "skip", as the other gate samplers' straight-through rule.
                gates[b * columns + c] = straightThrough ? (soft > 0.5 ? 1 : 0) : soft
                probs[b * columns + c] = logistic(pooled[i])
            }
        }
    }

    /// ∂L/∂logits (`batch × columns`) from ∂L/∂gates and ∂L/∂probs of `forward`'s outputs.
    public func backward(logits: UnsafeBufferPointer<Double>, noise: UnsafeBufferPointer<Double>, tau: Double,
                         gateGradient: UnsafeBufferPointer<Double>, probGradient: UnsafeBufferPointer<Double>,
                         into gradient: UnsafeMutableBufferPointer<Double>) {
        let pooled = pooled(logits)
        var upstream = [Double](repeating: 0, count: groupCount * columns)
        for b in 0..<batch {
            let k = Int(groups[b])
            for c in 0..<columns {
                let i = k * columns + c
                let soft = logistic((pooled[i] + noise[i]) / tau)
                let p = logistic(pooled[i])
                upstream[i] += gateGradient[b * columns + c] * soft * (1 - soft) / tau
                    + probGradient[b * columns + c] * p * (1 - p)
            }
        }
        for b in 0..<batch {
            let k = Int(groups[b])
            for c in 0..<columns { gradient[b * columns + c] = upstream[k * columns + c] / Double(sizes[k]) }
        }
    }
}
