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
    /// `scoresCopy` receives a copy of `scores`, taken while they are checked (it must not
    /// alias them); a failing call may leave it partly written.
    ///
    /// Order, as in UVC: (1) proximal shrink of the groups LeastSum covers, with the counts of
    /// the previous step; (2) primal step of the removal counts (group and token); (3) gate-logit
    /// step; (4) dual ascent of the group and token duals and of z. During warm-up only the
    /// factors (all 1) are written.
    public mutating func step(scores: GroupScores, gateGradient: UnsafeBufferPointer<Double>?,
                              tokenScores: UnsafeBufferPointer<Double>? = nil,
                              learningRate eta: Double, epoch: Double, factors: GroupOutputs,
                              scoresCopy: GroupOutputs) throws(UVCError) {
        // Debug builds (the Swift tests) check every state a step leaves; a state from outside
        // is checked whole when it is loaded (`SolverSession.load`).
        defer { assert(stateIsValid, "step left an invalid state") }
        let sums = try scores.validate(for: spec, copyingInto: scoresCopy)
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
        let (leastSums, slopes) = shrink(scores: scores, sums: sums, eta: eta, factors: factors)
        let tokens = config.pruneTokens ? tokenLeastSums(tokenScores) : (leastSums: [], slopes: [])

        // Expected MACs (continuous counts, gate probabilities) and its gradient.
        let inputs = relaxedInputs(removal: state.removal, tokenRemoval: state.tokenRemoval, gates: gateProbabilities())
        var expected = evaluate(inputs)
        if latency != nil { widthSecants(inputs, total: expected.macs, gradient: &expected.gradient) }
        // With a latency table the plan may skip parts its widths cannot pay for (`fitBudget`):
        // z holds the budget over that architecture, not one the plan will never run.
        let price = budgetPrice(decisions: planDecisions(scores: scores))
        primalStep(slopes: slopes, costGradient: expected.gradient, price: price)
        if config.pruneTokens { tokenStep(slopes: tokens.slopes, costGradient: expected.gradient, price: price) }
        updateGates(costGradient: expected.gradient, gateGradient: gateGradient, price: price, epoch: epoch)

        for i in 0..<(3 * l) where config.prune[i / l] {
            state.duals[i] = max(0, state.duals[i] + config.dualLR * leastSums[i])
        }
        for (b, leastSum) in tokens.leastSums.enumerated() {
            state.tokenDuals[b] = max(0, state.tokenDuals[b] + config.dualLR * leastSum)
        }
        let violation = constraintMACs(decisions: planDecisions(scores: scores)) / denseMACs - config.budget
        let clipped = min(max(violation, -config.zGradClip), config.zGradClip)
        state.z = max(0, state.z + config.zLearningRate(epoch) * clipped)
        state.searchSteps += 1
        state.sampleFresh = 0
    }

    /// Fraction of a layer's groups of a kind over which `widthSecants` measures what removing
    /// them saves.
    static let latencySecantWindow = 0.125

    /// With a latency table, replaces the width rows of `gradient` (heads, value dims, neurons
    /// of every kind the search prunes) by secants: (T(x) − T(x with that count lowered by
    /// `latencySecantWindow` of its groups, not below 1)) / the amount lowered. A measured table
    /// is noisy from one grid width to the next (the demo at batch 64: 248 neurons timed 0.01 ms
    /// faster than 240), and on a stretch where it falls or is flat the local derivative says
    /// that removing units saves nothing or costs time: the counts would stop there for good,
    /// and the budget be met by removing heads or skipping blocks instead. The secant sees the
    /// trend of the next eighth of the layer. The budget's value, z and the plan keep the exact
    /// table; gates and token counts keep their exact derivatives.
    /// - Complexity: O(depth²) relaxed evaluations' work: one evaluation per (kind, layer).
    private func widthSecants(_ x: [Double], total: Double, gradient: inout [Double]) {
        let l = spec.depth
        var y = x  // x with one count lowered at a time
        for (kind, field) in [(GroupKind.heads, RelaxedField.heads), (.dims, .vDim), (.neurons, .neurons)]
        where config.prune[kind.rawValue] {
            let window = Solver.latencySecantWindow * groups(kind)
            for layer in 0..<l {
                let i = field.rawValue * l + layer
                let lower = max(1, x[i] - window)
                guard x[i] - lower > 1e-9 else { continue }
                y[i] = lower
                gradient[i] = (total - evaluate(y).macs) / (x[i] - lower)
                y[i] = x[i]
            }
        }
    }

    /// Proximal factors for every kind, and per layer the normalised LeastSum and its slope in
    /// the fraction of groups removed. `sums`: each kind's total score.
    private mutating func shrink(scores: GroupScores, sums: (heads: Double, dims: Double, neurons: Double), eta: Double,
                                 factors: GroupOutputs) -> ([Double], [Double]) {
        let l = spec.depth, h = spec.numHeads, dv = spec.vHeadDim, m = spec.mlpHidden
        var leastSums = [Double](repeating: 0, count: 3 * l)
        var slopes = leastSums
        // Uninitialised: every reader writes before it reads.
        withUnsafeTemporaryAllocation(of: Double.self, capacity: LeastSum.scratchCount(max(h, dv, m))) { scratch in
            for (kind, width, source, sum, target) in [(GroupKind.heads, h, scores.heads, sums.heads, factors.heads),
                                                       (.neurons, m, scores.neurons, sums.neurons, factors.neurons)] {
                guard config.prune[kind.rawValue] else {
                    target.update(repeating: 1)
                    continue
                }
                let hintBase = kind == .heads ? 0 : l * (h + 1)
                for layer in 0..<l {
                    let i = kind.rawValue * l + layer, range = (layer * width)..<((layer + 1) * width)
                    (leastSums[i], slopes[i]) = normalisedLeastSum(
                        rows: 1, width: width, unit: sum / Double(source.count), count: state.removal[i],
                        dual: state.duals[i], eta: eta, scratch: scratch
                    ) { _ in
                        (UnsafeBufferPointer(rebasing: source[range]), UnsafeMutableBufferPointer(rebasing: target[range]),
                         hintBase + layer)
                    }
                }
            }
            guard config.prune[GroupKind.dims.rawValue] else {
                factors.dims.update(repeating: 1)
                return
            }
            withUnsafeTemporaryAllocation(of: Int.self, capacity: h) { kept in
                for layer in 0..<l {
                    // Value dims of the heads this layer keeps: removed heads go as a whole.
                    let headRow = UnsafeBufferPointer(rebasing: scores.heads[(layer * h)..<((layer + 1) * h)])
                    let keptCount = keptHeads(headRow, removing: Int(state.committed[layer]), into: kept, scratch: scratch)
                    func range(_ head: Int) -> Range<Int> { ((layer * h + head) * dv)..<((layer * h + head + 1) * dv) }
                    // A removed head's columns are shrunk through its head factor alone.
                    var next = 0
                    for head in 0..<h {
                        if next < keptCount, kept[next] == head {
                            next += 1
                        } else {
                            UnsafeMutableBufferPointer(rebasing: factors.dims[range(head)]).update(repeating: 1)
                        }
                    }
                    let i = GroupKind.dims.rawValue * l + layer
                    (leastSums[i], slopes[i]) = normalisedLeastSum(
                        rows: keptCount, width: dv, unit: sums.dims / Double(scores.dims.count), count: state.removal[i],
                        dual: state.duals[i], eta: eta, scratch: scratch
                    ) { r in
                        (UnsafeBufferPointer(rebasing: scores.dims[range(kept[r])]),
                         UnsafeMutableBufferPointer(rebasing: factors.dims[range(kept[r])]), l + layer * h + kept[r])
                    }
                }
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
    /// `dual / (unit · groups)`. `row(r)`: row r's scores, its factors and the index of its hint.
    private mutating func normalisedLeastSum(
        rows: Int, width: Int, unit: Double, count: Double, dual: Double, eta: Double,
        scratch: UnsafeMutableBufferPointer<Double>,
        row: (Int) -> (UnsafeBufferPointer<Double>, UnsafeMutableBufferPointer<Double>, Int)
    ) -> (Double, Double) {
        guard rows > 0, unit > 0 else {
            // All scores of the kind are zero: nothing to shrink, and removing costs nothing.
            for r in 0..<rows { row(r).1.update(repeating: 1) }
            return (0, 0)
        }
        let scale = unit * Double(rows * width)
        var value = 0.0, slope = 0.0
        for r in 0..<rows {
            let (scores, factors, at) = row(r)
            var hint = state.hint(at)
            let sum = LeastSum(scores, count: count, dual: dual / scale, eta: eta, hint: &hint, scratch: scratch,
                               factors: factors)
            state.setHint(at, hint)
            value += sum.value
            slope += sum.slope
        }
        return (value / scale, slope / Double(rows) / unit)
    }

    /// The heads of a layer that stay when the `removing` lowest-scoring ones go, in order,
    /// written to `kept`; returns how many.
    func keptHeads(_ headScores: UnsafeBufferPointer<Double>, removing: Int, into kept: UnsafeMutableBufferPointer<Int>,
                   scratch: UnsafeMutableBufferPointer<Double>) -> Int {
        withUnsafeTemporaryAllocation(of: Double.self, capacity: headScores.count) { mask in
            LowestGroups(headScores, count: removing, scratch: scratch).writeKeepMask(headScores, into: mask)
            var n = 0
            for head in mask.indices where mask[head] == 1 {
                kept[n] = head
                n += 1
            }
            return n
        }
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
            x[RelaxedField.qkDim.rawValue * l + layer] = Double(config.keptQKDim(spec))
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
    func budgetPrice(decisions: [Double]? = nil) -> Double {
        max(0, state.z + config.budgetDamping * (constraintMACs(decisions: decisions) / denseMACs - config.budget))
    }

    /// The MACs z holds to the budget: those of the architecture the state heads for, with the
    /// gates as they will be exported (decisions, not probabilities still short of 0/1) and the
    /// counts continuous (integer counts would make z chase a staircase and cycle around one
    /// step of it). The plan differs from it only by rounding the counts. `decisions` replaces
    /// the gate decisions (`planDecisions`, with a latency table).
    public func constraintMACs(decisions: [Double]? = nil) -> Double {
        evaluate(relaxedInputs(removal: state.removal, tokenRemoval: state.tokenRemoval,
                               gates: decisions ?? gateDecisions())).macs
    }

    /// Exact MACs of the architecture the state implies (committed counts and token removals,
    /// gate decisions): the cost of `plan(roundTo: 1)`.
    public func planMACs() -> Double {
        evaluate(relaxedInputs(removal: state.committed, tokenRemoval: state.tokenCommitted, gates: gateDecisions())).macs
    }
}
