/// Block (or block-part) skip gates: sampling for the forward pass, the probabilities the
/// budget term counts, the decisions the export uses, and the logit update.
extension Solver {
    /// Index of the gate serving `part` (0 = MHSA, 1 = MLP) of `layer`; nil when blocks are never skipped.
    public func gateIndex(layer: Int, part: Int) -> Int? {
        switch config.gatesPerLayer {
        case 0: nil
        case 1: layer
        default: 2 * layer + part
        }
    }

    /// P(part runs), `depth × 2` layer-major, at the schedules' current epoch (`state.epoch`).
    public func gateProbabilities() -> [Double] {
        let eps = config.softL0Eps(state.epoch)
        return perPart { i in config.gateSampler.probability(logit: state.logits[i], eps: eps) }
    }

    /// Hard decisions (1 = runs), `depth × 2` layer-major: what eval mode and the export use.
    public func gateDecisions() -> [Double] {
        let eps = config.softL0Eps(state.epoch)
        return perPart { i in config.gateSampler.decision(logit: state.logits[i], eps: eps) ? 1 : 0 }
    }

    private func perPart(_ value: (Int) -> Double) -> [Double] {
        var out = [Double](repeating: 1, count: 2 * spec.depth)
        for l in 0..<spec.depth {
            for part in 0..<2 {
                if let i = gateIndex(layer: l, part: part) { out[2 * l + part] = value(i) }
            }
        }
        return out
    }

    /// This step's keep weight of every block part (`depth × 2`, layer-major), drawn from the
    /// gates: straight-through samples during search, all ones during warm-up or without gates.
    /// The draw is remembered: the next `step` backpropagates its task gradient through it.
    public mutating func sampleGates(epoch: Double, into gates: UnsafeMutableBufferPointer<Double>) throws(UVCError) {
        defer { assert(stateIsValid, "sampleGates left an invalid state") }
        try require(epoch.isFinite && epoch >= 0, "epoch", "must be finite and >= 0, got \(epoch)")
        try require(gates.count == 2 * spec.depth, "gates_out", "expected \(2 * spec.depth) values, got \(gates.count)")
        state.epoch = epoch
        gates.update(repeating: 1)
        state.sampleFresh = 0
        guard config.skipBlocks, !config.isWarmup(epoch) else { return }
        let tau = config.temperature(epoch), eps = config.softL0Eps(epoch)
        for l in 0..<spec.depth {
            for part in 0..<config.gatesPerLayer {
                let i = gateIndex(layer: l, part: part)!
                let draw = config.gateSampler.sample(logit: state.logits[i], tau: tau, eps: eps,
                                                     straightThrough: config.straightThrough, rng: &state.rng)
                state.sampleSlope[i] = draw.slope
                // A block gate scales both parts with the same draw.
                for q in config.gatesPerLayer == 1 ? 0..<2 : part..<(part + 1) { gates[2 * l + q] = draw.value }
            }
        }
        state.sampleFresh = 1
    }

    /// Adds this step's gate-logit gradient to the running sum and, every `gatingInterval`
    /// steps, applies the mean with momentum SGD. The gradient is the task gradient through the
    /// last draw (if that draw has not been used yet) plus price · gatingWeight · ∂R/∂logit
    /// (`budgetPrice`), with R the expected MACs ratio and `costGradient` = ∂MACs/∂(relaxed inputs).
    mutating func updateGates(costGradient: [Double], gateGradient: UnsafeBufferPointer<Double>?, price: Double,
                              epoch: Double) {
        guard config.skipBlocks else { return }
        let l = spec.depth, eps = config.softL0Eps(epoch)
        let taskApplies = state.sampleFresh == 1 && gateGradient != nil
        for layer in 0..<l {
            for part in 0..<config.gatesPerLayer {
                let i = gateIndex(layer: layer, part: part)!
                // A block gate scales both parts: its cost and task gradients are the sums of both.
                let parts = config.gatesPerLayer == 1 ? [0, 1] : [part]
                var dMACs = 0.0, dTask = 0.0
                for q in parts {
                    let field = q == 0 ? RelaxedField.attentionGate : RelaxedField.mlpGate
                    dMACs += costGradient[field.rawValue * l + layer]
                    if taskApplies { dTask += gateGradient![2 * layer + q] }
                }
                let dProb = config.gateSampler.probabilitySlope(logit: state.logits[i], eps: eps)
                state.gradientSum[i] = bounded(state.gradientSum[i] + bounded(price * config.gatingWeight * dMACs
                                                                                / denseMACs * dProb)
                                               + bounded(dTask * state.sampleSlope[i]))
            }
        }
        state.accumulatedSteps += 1
        guard state.accumulatedSteps >= Double(config.gatingInterval) else { return }
        for i in state.logits.indices {
            state.velocity[i] = bounded(config.gateMomentum * state.velocity[i]
                                        + state.gradientSum[i] / state.accumulatedSteps)
            // Bounded so that probabilities and their slopes stay representable.
            state.logits[i] = min(max(state.logits[i] - config.gateLR * state.velocity[i], -SolverState.logitBound),
                                 SolverState.logitBound)
            state.gradientSum[i] = 0
        }
        state.accumulatedSteps = 0
    }
}

/// `x` clamped to ±1e300, like the logits bounded so that extreme but finite gradients (a
/// gate gradient near the largest double, a soft-L0 slope at a tiny ε) never sum to ∞; an
/// overflowed product times 0 (NaN) counts as 0.
@inline(__always)
private func bounded(_ x: Double) -> Double {
    x.isNaN ? 0 : min(max(x, -SolverState.gradientBound), SolverState.gradientBound)
}
