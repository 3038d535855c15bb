/// One optimizer step of the solver.
extension Solver {
    /// Runs one step and writes the proximal factors the caller multiplies into the weights
    /// (each group's `attn.proj` / `mlp.fc2` input columns; 1 = untouched).
    ///
    /// `scores`: this step's group scores (after the optimizer step). `gateGradient`: ∂(task
    /// loss)/∂(the `sampleGates` output of this step's forward), `depth × 2`, or nil.
    /// `tokenScores`: `depth × numTokens`, row l the class attention (probabilities, averaged over
    /// the block's kept heads and the batch) of the tokens entering block l in this step's forward;
    /// the order within a row's non-prefix entries does not matter (LeastSum selects by value), the
    /// prefix entries and those past the committed schedule's tokens[l] are not read. Nil counts
    /// every token alike. Read only with `config.pruneTokens`.
    /// `learningRate`: the model optimizer's current η_W. `epoch`: fractional epoch.
    ///
    /// Order, as in UVC: (1) proximal shrink of the groups LeastSum covers, with the counts of
    /// the previous step; (2) primal step of the removal counts (group and token); (3) gate-logit
    /// step; (4) dual ascent of the group and token duals and of z. During warm-up only the
    /// factors (all 1) are written.
    public mutating func step(scores: GroupScores, gateGradient: UnsafeBufferPointer<Double>?,
                              tokenScores: UnsafeBufferPointer<Double>? = nil,
                              learningRate eta: Double, epoch: Double, factors: GroupOutputs) throws(UVCError) {
        try scores.validate(for: spec)
        if let t = tokenScores { try validateTokenScores(t) }
        try factors.validate(for: spec, names: ("head_factor", "dim_factor", "neuron_factor"))
        try require(eta.isFinite && eta >= 0, "lr", "must be finite and >= 0, got \(eta)")
        try require(epoch.isFinite && epoch >= 0, "epoch", "must be finite and >= 0, got \(epoch)")
        if let g = gateGradient {
            try require(g.count == 2 * spec.depth, "gate_grad", "expected shape (\(spec.depth), 2), got \(g.count) values")
            for v in g { try require(v.isFinite, "gate_grad", "must be finite, got \(v)") }
        }
        state.epoch = epoch
        guard !config.isWarmup(epoch) else {
            factors.fill(1)
            state.sampleFresh = 0
            return
        }
        let l = spec.depth
        let (leastSums, slopes) = shrink(scores: scores, eta: eta, factors: factors)
        let tokens = config.pruneTokens ? tokenLeastSums(tokenScores) : (leastSums: [], slopes: [])

        // Expected MACs (continuous counts, gate probabilities) and its gradient.
        let expected = evaluate(relaxedInputs(removal: state.removal, tokenRemoval: state.tokenRemoval,
                                              gates: gateProbabilities()))
        let price = budgetPrice()
        primalStep(slopes: slopes, costGradient: expected.gradient, price: price)
        if config.pruneTokens { tokenStep(slopes: tokens.slopes, costGradient: expected.gradient, price: price) }
        updateGates(costGradient: expected.gradient, gateGradient: gateGradient, price: price, epoch: epoch)

        for i in 0..<(3 * l) where config.prune[i / l] {
            state.duals[i] = max(0, state.duals[i] + config.dualLR * leastSums[i])
        }
        for (b, leastSum) in tokens.leastSums.enumerated() {
            state.tokenDuals[b] = max(0, state.tokenDuals[b] + config.dualLR * leastSum)
        }
        let violation = constraintMACs() / denseMACs - config.budget
        let clipped = min(max(violation, -config.zGradClip), config.zGradClip)
        state.z = max(0, state.z + config.zLearningRate(epoch) * clipped)
        state.searchSteps += 1
        state.sampleFresh = 0
    }

    /// Proximal factors for every kind, and per layer the normalised LeastSum and its slope in
    /// the fraction of groups removed.
    private mutating func shrink(scores: GroupScores, eta: Double, factors: GroupOutputs) -> ([Double], [Double]) {
        let l = spec.depth, h = spec.numHeads, dv = spec.vHeadDim, m = spec.mlpHidden
        var leastSums = [Double](repeating: 0, count: 3 * l)
        var slopes = leastSums
        var scratch = [Double](repeating: 0, count: max(h, dv, m))
        scratch.withUnsafeMutableBufferPointer { scratch in
            for (kind, width, source, target) in [(GroupKind.heads, h, scores.heads, factors.heads),
                                                  (.neurons, m, scores.neurons, factors.neurons)] {
                guard config.prune[kind.rawValue] else {
                    target.update(repeating: 1)
                    continue
                }
                let hintBase = kind == .heads ? 0 : l * (h + 1)
                let unit = Kernels.sum(source) / Double(source.count)
                for layer in 0..<l {
                    let row = UnsafeBufferPointer(rebasing: source[(layer * width)..<((layer + 1) * width)])
                    let (leastSum, slope) = normalisedLeastSum(
                        [row], unit: unit, count: state.removal[kind.rawValue * l + layer],
                        dual: state.duals[kind.rawValue * l + layer], eta: eta, hintAt: hintBase + layer, scratch: scratch,
                        factors: [UnsafeMutableBufferPointer(rebasing: target[(layer * width)..<((layer + 1) * width)])])
                    leastSums[kind.rawValue * l + layer] = leastSum
                    slopes[kind.rawValue * l + layer] = slope
                }
            }
            guard config.prune[GroupKind.dims.rawValue] else {
                factors.dims.update(repeating: 1)
                return
            }
            let unit = Kernels.sum(scores.dims) / Double(scores.dims.count)
            for layer in 0..<l {
                // Value dims of the heads this layer keeps: removed heads go as a whole.
                let headRow = UnsafeBufferPointer(rebasing: scores.heads[(layer * h)..<((layer + 1) * h)])
                let keep = keptMask(headRow, removing: Int(state.committed[layer]), scratch: scratch)
                var rows: [UnsafeBufferPointer<Double>] = []
                var targets: [UnsafeMutableBufferPointer<Double>] = []
                for head in 0..<h {
                    let range = ((layer * h + head) * dv)..<((layer * h + head + 1) * dv)
                    guard keep[head] else {
                        // A removed head's columns are shrunk through its head factor alone.
                        UnsafeMutableBufferPointer(rebasing: factors.dims[range]).update(repeating: 1)
                        continue
                    }
                    rows.append(UnsafeBufferPointer(rebasing: scores.dims[range]))
                    targets.append(UnsafeMutableBufferPointer(rebasing: factors.dims[range]))
                }
                let i = GroupKind.dims.rawValue * l + layer
                (leastSums[i], slopes[i]) = normalisedLeastSum(
                    rows, unit: unit, count: state.removal[i], dual: state.duals[i], eta: eta,
                    hintAt: l + layer * h, hintStride: 1, heads: Array(0..<h).filter { keep[$0] },
                    scratch: scratch, factors: targets)
            }
        }
        return (leastSums, slopes)
    }

    /// LeastSum over one or more equally long rows (one layer's groups of a kind; for dims, the
    /// rows of its kept heads) with the same count, in units of `unit`, the kind's mean score
    /// over all layers: the value is the removed score mass over that of as many average
    /// groups as the rows hold, the slope the next group's score over `unit` (averaged over
    /// rows). A layer of weaker groups than the model's average is cheaper to prune. The duals
    /// act on this normalised sum, so the proximal factor uses the raw-units dual
    /// `dual / (unit · groups)`.
    private mutating func normalisedLeastSum(
        _ rows: [UnsafeBufferPointer<Double>], unit: Double, count: Double, dual: Double, eta: Double, hintAt: Int,
        hintStride: Int = 0, heads: [Int] = [0], scratch: UnsafeMutableBufferPointer<Double>,
        factors: [UnsafeMutableBufferPointer<Double>]
    ) -> (Double, Double) {
        guard let width = rows.first?.count, unit > 0 else {
            // All scores of the kind are zero: nothing to shrink, and removing costs nothing.
            for f in factors { f.update(repeating: 1) }
            return (0, 0)
        }
        let scale = unit * Double(rows.count * width)
        var value = 0.0, slope = 0.0
        for (r, row) in rows.enumerated() {
            var hint = state.hints[hintAt + hintStride * heads[r]]
            let sum = LeastSum(row, count: count, dual: dual / scale, eta: eta, hint: &hint, scratch: scratch,
                               factors: factors[r])
            state.hints[hintAt + hintStride * heads[r]] = hint
            value += sum.value
            slope += sum.slope
        }
        return (value / scale, slope / Double(rows.count) / unit)
    }

    /// Which of a layer's heads stay when the `removing` lowest-scoring ones go.
    func keptMask(_ headScores: UnsafeBufferPointer<Double>, removing: Int,
                  scratch: UnsafeMutableBufferPointer<Double>) -> [Bool] {
        var mask = [Double](repeating: 1, count: headScores.count)
        mask.withUnsafeMutableBufferPointer {
            LowestGroups(headScores, count: removing, hint: -1, scratch: scratch).writeKeepMask(headScores, into: $0)
        }
        return mask.map { $0 == 1 }
    }

    /// Projected, clipped gradient step on the removal counts, in units of the fraction of a
    /// layer's groups: g = dual · (normalised next-group score) − price · groups · ∂R/∂kept, each
    /// kind's vector scaled to ‖g‖∞ ≤ 1, then s ← clamp(s − lr · groups · g, 0, groups − 1).
    /// The committed integer counts then follow with hysteresis.
    private mutating func primalStep(slopes: [Double], costGradient: [Double], price: Double) {
        let l = spec.depth
        for kind in GroupKind.allCases where config.prune[kind.rawValue] {
            let n = groups(kind)
            let field: RelaxedField = kind == .heads ? .heads : kind == .dims ? .vDim : .neurons
            var g = [Double](repeating: 0, count: l)
            var largest = 0.0
            for layer in 0..<l {
                let i = kind.rawValue * l + layer
                g[layer] = state.duals[i] * slopes[i] - price * n * costGradient[field.rawValue * l + layer] / denseMACs
                largest = max(largest, abs(g[layer]))
            }
            let scale = config.countLR[kind.rawValue] * n / max(1, largest)
            for layer in 0..<l {
                let i = kind.rawValue * l + layer
                state.removal[i] = min(max(state.removal[i] - scale * g[layer], 0), n - 1)
                if abs(state.removal[i] - state.committed[i]) > 0.5 + config.hysteresis {
                    state.committed[i] = (state.removal[i] + 0.5).rounded(.down)
                }
            }
        }
    }

    /// The relaxed cost-model input: kept = groups − removal for each kind, the given gate
    /// values per part (`depth × 2`), the token schedule of the given per-block token removals
    /// (`tokenSchedule`: by the gate decisions, whatever `gates` holds).
    func relaxedInputs(removal: [Double], tokenRemoval: [Double], gates: [Double]) -> [Double] {
        let l = spec.depth
        let tokens = tokenSchedule(tokenRemoval)
        var x = [Double](repeating: 0, count: RelaxedField.allCases.count * l)
        for layer in 0..<l {
            x[RelaxedField.heads.rawValue * l + layer] = groups(.heads) - removal[layer]
            x[RelaxedField.vDim.rawValue * l + layer] = groups(.dims) - removal[l + layer]
            x[RelaxedField.neurons.rawValue * l + layer] = groups(.neurons) - removal[2 * l + layer]
            x[RelaxedField.attentionGate.rawValue * l + layer] = gates[2 * layer]
            x[RelaxedField.mlpGate.rawValue * l + layer] = gates[2 * layer + 1]
            x[RelaxedField.tokens.rawValue * l + layer] = tokens[layer]
        }
        return x
    }

    /// Expected MACs under the current state: continuous counts, gate probabilities (the token
    /// schedule by the gate decisions).
    public func expectedMACs() -> Double {
        evaluate(relaxedInputs(removal: state.removal, tokenRemoval: state.tokenRemoval, gates: gateProbabilities())).macs
    }

    /// What one unit of the MACs ratio costs every primal variable this step: the derivative
    /// of the augmented Lagrangian z·(R − B) + (ρ/2)·(R − B)², floored at 0, with R the ratio of
    /// `constraintMACs`. The ρ term prices a violation at once (z alone needs many steps to
    /// grow, then overshoots) and damps the (primal, z) pair so that it settles on the budget.
    func budgetPrice() -> Double {
        max(0, state.z + config.budgetDamping * (constraintMACs() / denseMACs - config.budget))
    }

    /// The MACs z holds to the budget: those of the architecture the state heads for, with the
    /// gates as they will be exported (decisions, not probabilities still short of 0/1) and the
    /// counts continuous (integer counts would make z chase a staircase and cycle around one
    /// step of it). The plan differs from it only by rounding the counts.
    public func constraintMACs() -> Double {
        evaluate(relaxedInputs(removal: state.removal, tokenRemoval: state.tokenRemoval, gates: gateDecisions())).macs
    }

    /// Exact MACs of the architecture the state implies (committed counts and token removals,
    /// gate decisions): the cost of `plan(roundTo: 1)`.
    public func planMACs() -> Double {
        evaluate(relaxedInputs(removal: state.committed, tokenRemoval: state.tokenCommitted, gates: gateDecisions())).macs
    }
}
