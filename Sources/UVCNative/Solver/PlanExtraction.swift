/// The discrete architecture the solver state implies: keep masks for training and the
/// plan for export, both from the committed counts and the given (last) scores.
extension Solver {
    /// Keep masks (1 = kept) for the forward pass: in each layer the committed number of
    /// lowest-scoring heads, value dims (in every kept head; all dims of a removed head) and
    /// neurons are 0. All ones until the first search step. After it, with a latency table
    /// the widths and skipped parts are the ones `plan` exports (snapped to the table's grid,
    /// trimmed to the budget; a part the trim skips keeps nothing), so the model trains what it
    /// will run.
    public func masks(scores: GroupScores, into out: GroupOutputs) throws(UVCError) {
        try scores.validate(for: spec)
        try out.validate(for: spec, names: ("head_mask", "dim_mask", "neuron_mask"))
        let l = spec.depth
        guard latency != nil, state.searchSteps > 0 else {
            keepMasks(scores: scores, removing: { kind, layer in Int(state.committed[kind.rawValue * l + layer]) },
                      attention: { _ in true }, mlp: { _ in true }, into: out)
            return
        }
        let shape = self.shape(scores: scores, roundTo: 1)
        keepMasks(scores: scores, removing: { kind, layer in
            switch kind {
            case .heads: Int(state.committed[layer])
            case .dims: spec.vHeadDim - shape.vDim[layer]
            case .neurons: spec.mlpHidden - shape.neurons[layer]
            }
        }, attention: { shape.decisions[2 * $0] == 1 }, mlp: { shape.decisions[2 * $0 + 1] == 1 }, into: out)
    }

    /// Which block parts the exported plan runs (1 = runs), `depth × 2` layer-major: the gate
    /// decisions, and with a latency table (after the first search step) also the parts the
    /// budget trim skips under `scores`.
    /// What eval mode uses, so the masked model in eval mode is the exported one.
    public func planDecisions(scores: GroupScores) -> [Double] { planParts(scores: scores).decisions }

    /// The plan's part decisions (`planDecisions`) and its cost (`planMACs()`, or with a latency
    /// table the snapped and trimmed plan's ms) under `scores`, from one budget trim.
    public func planSummary(scores: GroupScores) -> (decisions: [Double], cost: Double) {
        let (decisions, shape) = planParts(scores: scores)
        return (decisions, shape.map(cost) ?? planMACs())
    }

    /// `planDecisions`, with the trimmed shape it came from (nil without a latency table).
    private func planParts(scores: GroupScores) -> (decisions: [Double], shape: PlanShape?) {
        guard latency != nil else { return (gateDecisions(), nil) }
        let shape = self.shape(scores: scores, roundTo: 1)
        return (state.searchSteps == 0 ? gateDecisions() : shape.decisions, shape)
    }

    /// What the exported plan runs, per layer: value-dim width, MLP width and the decision of
    /// each part (`depth × 2`).
    struct PlanShape {
        var vDim: [Int]
        var neurons: [Int]
        var decisions: [Double]
    }

    /// Exact cost (MACs, or ms with a latency table) of the plan `shape` describes, with the
    /// committed head and token counts.
    func cost(_ shape: PlanShape) -> Double {
        let l = spec.depth
        var removal = state.committed
        for layer in 0..<l {
            removal[l + layer] = Double(spec.vHeadDim - shape.vDim[layer])
            removal[2 * l + layer] = Double(spec.mlpHidden - shape.neurons[layer])
        }
        return evaluate(relaxedInputs(removal: removal, tokenRemoval: state.tokenCommitted, gates: shape.decisions)).macs
    }

    /// The committed counts' widths, rounded (`roundTo` > 1) or snapped to a latency table's
    /// grid, then trimmed to the budget (with a latency table possibly skipping parts); with
    /// `fit` also trimmed at `roundTo` 1 and then filled up to the budget (`fillBudget`); the
    /// gate decisions for the parts.
    func shape(scores: GroupScores, roundTo: Int, fit: Bool = false) -> PlanShape {
        let l = spec.depth
        var shape = PlanShape(vDim: (0..<l).map { spec.vHeadDim - Int(state.committed[l + $0]) },
                              neurons: (0..<l).map { spec.mlpHidden - Int(state.committed[2 * l + $0]) },
                              decisions: gateDecisions())
        let grids = latency.map { (WidthGrid(points: $0.vDimGrid), WidthGrid(points: $0.neuronGrid)) }
            ?? (roundTo > 1 || fit ? (WidthGrid(roundTo: roundTo, dense: spec.vHeadDim),
                                      WidthGrid(roundTo: roundTo, dense: spec.mlpHidden)) : nil)
        if var (dimGrid, neuronGrid) = grids {
            // A kind the search does not prune keeps its full width: its only allowed width.
            if !config.prune[GroupKind.dims.rawValue] { dimGrid = WidthGrid(points: [spec.vHeadDim]) }
            if !config.prune[GroupKind.neurons.rawValue] { neuronGrid = WidthGrid(points: [spec.mlpHidden]) }
            shape.vDim = shape.vDim.map { dimGrid.nearest($0) }
            shape.neurons = shape.neurons.map { neuronGrid.nearest($0) }
            let ranked = RankedScores(self, scores: scores)
            fitBudget(ranked, grids: (dimGrid, neuronGrid), shape: &shape)
            if fit { fillBudget(ranked, grids: (dimGrid, neuronGrid), shape: &shape) }
        }
        return shape
    }

    /// Writes keep masks for per-layer removal counts; a part that does not run keeps nothing.
    private func keepMasks(scores: GroupScores, removing: (GroupKind, Int) -> Int, attention: (Int) -> Bool,
                           mlp: (Int) -> Bool, into out: GroupOutputs) {
        let h = spec.numHeads, dv = spec.vHeadDim, m = spec.mlpHidden
        var scratch = [Double](repeating: 0, count: max(h, dv, m))
        scratch.withUnsafeMutableBufferPointer { scratch in
            for layer in 0..<spec.depth {
                let heads = layer * h..<(layer + 1) * h
                let headMask = UnsafeMutableBufferPointer(rebasing: out.heads[heads])
                let headRow = UnsafeBufferPointer(rebasing: scores.heads[heads])
                LowestGroups(headRow, count: removing(.heads, layer), scratch: scratch).writeKeepMask(headRow, into: headMask)
                if !attention(layer) { headMask.update(repeating: 0) }
                for head in 0..<h {
                    let dims = (layer * h + head) * dv..<(layer * h + head + 1) * dv
                    let dimMask = UnsafeMutableBufferPointer(rebasing: out.dims[dims])
                    guard headMask[head] == 1 else {
                        dimMask.update(repeating: 0)
                        continue
                    }
                    let row = UnsafeBufferPointer(rebasing: scores.dims[dims])
                    LowestGroups(row, count: removing(.dims, layer), scratch: scratch)
                        .writeKeepMask(row, into: dimMask)
                }
                let neurons = layer * m..<(layer + 1) * m
                let neuronMask = UnsafeMutableBufferPointer(rebasing: out.neurons[neurons])
                let row = UnsafeBufferPointer(rebasing: scores.neurons[neurons])
                LowestGroups(row, count: removing(.neurons, layer), scratch: scratch)
                    .writeKeepMask(row, into: neuronMask)
                if !mlp(layer) { neuronMask.update(repeating: 0) }
            }
        }
    }

    /// The plan to export: parts run by the gate decisions, kept heads / value dims / neurons
    /// by the committed counts (the highest-scoring ones), tokens by `committedTokens` (all of
    /// them without token pruning). Its keep masks are written to `out`; the result is the plan
    /// and its exact MACs.
    ///
    /// With `roundTo` > 1 every layer's value-dim width and MLP width is rounded to the nearest
    /// multiple of `roundTo` (widths below `roundTo` in the dense model are left alone); with a
    /// latency table (where `roundTo` must be 1) to the nearest width the table measured, so the
    /// plan is priced by measured times, not interpolated ones. Then, while the plan exceeds the
    /// budget, the step that saves the most cost per unit of score lost is taken (see
    /// `fitBudget`): one width step down, or with a latency table skipping a running part. If
    /// no step can meet the budget the smallest such plan is returned, over budget.
    ///
    /// With `fit` the plan is fitted to the budget from both sides: trimmed as above also at
    /// `roundTo` 1 (one unit a step), then widened while a step still fits (`fillBudget`), so a
    /// search that stopped short of the budget or past it exports a plan that spends the budget.
    /// Such a plan no longer equals the training masks where it trimmed or filled. The result
    /// is the plan and its exact cost.
    public func plan(scores: GroupScores, roundTo: Int, fit: Bool = false,
                     into out: GroupOutputs) throws(UVCError) -> (ArchPlan, Double) {
        try scores.validate(for: spec)
        try out.validate(for: spec, names: ("head_mask", "dim_mask", "neuron_mask"))
        try require(roundTo >= 1 && roundTo <= 1 << 20, "round_to", "must be an integer >= 1, got \(roundTo)")
        try require(latency == nil || roundTo == 1, "round_to", "a latency budget snaps widths to the table's grid; "
                    + "leave round_to at 1 (got \(roundTo))")
        let l = spec.depth
        let shape = self.shape(scores: scores, roundTo: roundTo, fit: fit)
        let attention = { (layer: Int) in shape.decisions[2 * layer] == 1 }
        let mlp = { (layer: Int) in shape.decisions[2 * layer + 1] == 1 }
        keepMasks(scores: scores, removing: { kind, layer in
            switch kind {
            case .heads: Int(state.committed[layer])
            case .dims: spec.vHeadDim - shape.vDim[layer]
            case .neurons: spec.mlpHidden - shape.neurons[layer]
            }
        }, attention: attention, mlp: mlp, into: out)
        let tokens = committedTokens
        let layers = (0..<l).map { layer in
            LayerPlan(heads: attention(layer) ? spec.numHeads - Int(state.committed[layer]) : 0,
                      qkDim: attention(layer) ? config.keptQKDim(spec) : 0,
                      vDim: attention(layer) ? shape.vDim[layer] : 0, neurons: mlp(layer) ? shape.neurons[layer] : 0,
                      attention: attention(layer), mlp: mlp(layer), tokens: tokens[layer])
        }
        let plan = ArchPlan(layers: layers)
        return (plan, exactCost(plan))
    }

    /// Greedy budget repair after rounding or snapping: while the plan exceeds the budget, takes
    /// the step with the most cost saved (up to what the budget still needs) per unit of score
    /// lost, among steps that save anything: one part down to its nearest narrower grid width
    /// that saves time (a kind the search does not prune has one width), or (with a latency
    /// table and skippable blocks) one running gate's part(s) skipped. A table flat in width (a CPU at batch 1) thus skips
    /// parts instead of narrowing layers for nothing.
    ///
    /// Score lost, in units of an average part of its kind (MHSA or MLP; `RankedScores`): a
    /// part's weight w_p is its score mass (the kept heads' value-dim scores; the neuron scores)
    /// over the mean mass of that kind across layers; removing units costs w_p · (their share of
    /// the part's sorted, normalised scores, per kept head for value dims); skipping a part
    /// costs w_p · (the share its kept units hold) · 2·P(its gate runs), so an undecided gate
    /// (P = ½) prices a skip like removing every kept unit and the gates' learned preference
    /// orders the skips. A model pooling its class token keeps one MHSA part: without attention
    /// the class token sees no patch.
    private func fitBudget(_ ranked: RankedScores, grids: (dims: WidthGrid, neurons: WidthGrid),
                           shape: inout PlanShape) {
        let l = spec.depth
        let share = ranked.share
        func cost() -> Double { self.cost(shape) }
        let probabilities = gateProbabilities()
        let skips = latency != nil && config.skipBlocks
        var current = cost()
        // The part (0 MHSA, 1 MLP) of each kind of width step, its grid and its width in a shape.
        let parts = [(0, grids.dims, \PlanShape.vDim), (1, grids.neurons, \PlanShape.neurons)]
        while current > budgetMACs {
            var best: (ratio: Double, apply: (inout PlanShape) -> Void, cost: Double)?
            /// Whether `change` saves anything; if it does, it is a candidate.
            @discardableResult
            func consider(_ lost: Double, _ change: @escaping (inout PlanShape) -> Void) -> Bool {
                let before = shape
                change(&shape)
                let after = cost()
                shape = before
                guard after < current else { return false }
                // Only what the budget still needs counts as saved: a large step is not
                // preferred for savings past the budget, which the plan would throw away.
                let ratio = min(current - after, current - budgetMACs) / (lost + 1e-12)
                if best == nil || ratio > best!.ratio { best = (ratio, change, after) }
                return true
            }
            // Per running part, the nearest narrower grid width that saves anything: a measured
            // width can be slower than the next wider one (timing noise, an odd width), and
            // stepping only one point would stop there.
            for layer in 0..<l {
                for (part, grid, width) in parts where shape.decisions[2 * layer + part] == 1 {
                    let now = shape[keyPath: width][layer]
                    var lower = grid.nextLower(now)
                    while let w = lower, !consider(share(layer, part, w..<now), { $0[keyPath: width][layer] = w }) {
                        lower = grid.nextLower(w)
                    }
                }
            }
            if skips {
                let attentionRunning = (0..<l).filter { shape.decisions[2 * $0] == 1 }.count
                for layer in 0..<l {
                    for part in 0..<config.gatesPerLayer {
                        let parts = config.gatesPerLayer == 1 ? [0, 1] : [part]
                        let running = parts.filter { shape.decisions[2 * layer + $0] == 1 }
                        guard !running.isEmpty else { continue }
                        if spec.pool == .token, attentionRunning == 1, running.contains(0) { continue }
                        let lost = running.reduce(0.0) { sum, q in
                            sum + share(layer, q, 0..<(q == 0 ? shape.vDim[layer] : shape.neurons[layer]))
                                * 2 * probabilities[2 * layer + q]
                        }
                        consider(lost) { for q in running { $0.decisions[2 * layer + q] = 0 } }
                    }
                }
            }
            guard let step = best else { return }
            step.apply(&shape)
            current = step.cost
        }
    }

    /// Greedy fill after the trim (`fit`): while a step fits within the budget, takes the one
    /// that gains the most score per unit of cost added: one running part one grid width wider
    /// (value dims of a layer that keeps a head; neurons). Score gained is `RankedScores.share`
    /// of the units the step adds, the units the trim would price as lost. The committed head
    /// counts and the parts' decisions stay.
    /// - Complexity: O(steps · depth · cost), a step being one grid width.
    private func fillBudget(_ ranked: RankedScores, grids: (dims: WidthGrid, neurons: WidthGrid),
                            shape: inout PlanShape) {
        let l = spec.depth
        var current = cost(shape)
        while true {
            var best: (ratio: Double, shape: PlanShape, cost: Double)?
            func consider(_ gained: Double, _ change: (inout PlanShape) -> Void) {
                var wider = shape
                change(&wider)
                let after = cost(wider)
                guard gained > 0, after <= budgetMACs else { return }
                let ratio = gained / max(after - current, 1e-12)
                if best == nil || ratio > best!.ratio { best = (ratio, wider, after) }
            }
            for layer in 0..<l {
                if shape.decisions[2 * layer] == 1, Int(state.committed[layer]) < spec.numHeads,
                   let upper = grids.dims.nextHigher(shape.vDim[layer]) {
                    consider(ranked.share(layer, 0, shape.vDim[layer]..<upper)) { $0.vDim[layer] = upper }
                }
                if shape.decisions[2 * layer + 1] == 1, let upper = grids.neurons.nextHigher(shape.neurons[layer]) {
                    consider(ranked.share(layer, 1, shape.neurons[layer]..<upper)) { $0.neurons[layer] = upper }
                }
            }
            guard let step = best else { return }
            shape = step.shape
            current = step.cost
        }
    }
}

/// Per layer, the value-dim and neuron scores normalised and sorted high to low (value dims
/// averaged over the kept heads: rank i = the i-th best dim of each kept head), and each part's
/// weight w_p: its score mass over the mean mass of its kind (MHSA or MLP) across layers (1
/// where a kind has no mass at all). What the budget trim and fill price units by.
struct RankedScores {
    private var dimRanks: [[Double]] = [], neuronRanks: [[Double]] = []
    private var weight: [Double]

    init(_ solver: Solver, scores: GroupScores) {
        let spec = solver.spec
        let l = spec.depth, h = spec.numHeads, dv = spec.vHeadDim, m = spec.mlpHidden
        var mass = [Double](repeating: 0, count: 2 * l)
        var scratch = [Double](repeating: 0, count: h), keptHeadIndices = [Int](repeating: 0, count: h)
        for layer in 0..<l {
            let row = Array(scores.neurons[layer * m..<(layer + 1) * m]).sorted(by: >)
            let mean = row.reduce(0, +) / Double(m)
            neuronRanks.append(row.map { mean > 0 ? $0 / mean : 0 })
            mass[2 * layer + 1] = mean * Double(m)
            let keptCount = scratch.withUnsafeMutableBufferPointer { sc in
                keptHeadIndices.withUnsafeMutableBufferPointer {
                    solver.keptHeads(UnsafeBufferPointer(rebasing: scores.heads[layer * h..<(layer + 1) * h]),
                                     removing: Int(solver.state.committed[layer]), into: $0, scratch: sc)
                }
            }
            var ranks = [Double](repeating: 0, count: dv), total = 0.0, kept = 0
            for head in keptHeadIndices[0..<keptCount] {
                let dims = Array(scores.dims[(layer * h + head) * dv..<(layer * h + head + 1) * dv]).sorted(by: >)
                for (i, v) in dims.enumerated() { ranks[i] += v }
                total += dims.reduce(0, +)
                kept += 1
            }
            let dimMean = kept > 0 ? total / Double(kept * dv) : 0
            dimRanks.append(ranks.map { dimMean > 0 ? $0 / Double(kept) / dimMean : 0 })
            mass[2 * layer] = total
        }
        weight = mass
        for part in 0..<2 {
            let mean = stride(from: part, to: 2 * l, by: 2).reduce(0) { $0 + mass[$1] } / Double(l)
            for i in stride(from: part, to: 2 * l, by: 2) { weight[i] = mean > 0 ? mass[i] / mean : 1 }
        }
    }

    /// w_p · (the share of part `part` (0 MHSA, 1 MLP) of `layer` that the ranked units `units`
    /// hold), in units of an average part of its kind.
    func share(_ layer: Int, _ part: Int, _ units: Range<Int>) -> Double {
        let ranks = part == 0 ? dimRanks[layer] : neuronRanks[layer]
        return weight[2 * layer + part] * ranks[units].reduce(0, +) / Double(ranks.count)
    }
}

/// The widths a plan may take after rounding, increasing: multiples of `roundTo` up to the
/// dense width and the dense width itself, or the widths a latency table measured. No points:
/// a dense width below `roundTo`, which is left alone (neither rounded nor stepped down).
struct WidthGrid {
    let points: [Int]

    init(points: [Int]) { self.points = points }

    init(roundTo: Int, dense: Int) {
        points = dense >= roundTo ? Array(stride(from: roundTo, to: dense, by: roundTo)) + [dense] : []
    }

    /// The allowed width closest to `width` (the larger on a tie).
    /// - Complexity: O(points.count).
    func nearest(_ width: Int) -> Int {
        points.min { (abs($0 - width), -$0) < (abs($1 - width), -$1) } ?? width
    }

    /// The next allowed width below `width`, if any.
    func nextLower(_ width: Int) -> Int? { points.last { $0 < width } }

    /// The next allowed width above `width`, if any.
    func nextHigher(_ width: Int) -> Int? { points.first { $0 > width } }
}
