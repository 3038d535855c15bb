/// The discrete architecture the solver state implies: keep masks for training and the
/// plan for export, both from the committed counts and the given (last) scores.
extension Solver {
    /// Keep masks (1 = kept) for the forward pass: in each layer the committed number of
    /// lowest-scoring heads, value dims (in every kept head; all dims of a removed head) and
    /// neurons are 0. All ones until the first search step moves a count. With a latency table
    /// the widths are the ones `plan` exports (snapped to the table's grid), so the model trains
    /// what it will run.
    public func masks(scores: GroupScores, into out: GroupOutputs) throws(UVCError) {
        try scores.validate(for: spec)
        try out.validate(for: spec, names: ("head_mask", "dim_mask", "neuron_mask"))
        let l = spec.depth
        guard latency != nil else {
            keepMasks(scores: scores, removing: { kind, layer in Int(state.committed[kind.rawValue * l + layer]) },
                      attention: { _ in true }, mlp: { _ in true }, into: out)
            return
        }
        let (vDim, neurons) = widths(scores: scores, roundTo: 1, decisions: gateDecisions())
        keepMasks(scores: scores, removing: { kind, layer in
            switch kind {
            case .heads: Int(state.committed[layer])
            case .dims: spec.vHeadDim - vDim[layer]
            case .neurons: spec.mlpHidden - neurons[layer]
            }
        }, attention: { _ in true }, mlp: { _ in true }, into: out)
    }

    /// Each layer's value-dim and MLP width in the exported plan: the committed counts, rounded
    /// (`roundTo` > 1) or snapped to a latency table's grid, then trimmed to the budget.
    private func widths(scores: GroupScores, roundTo: Int, decisions: [Double]) -> (vDim: [Int], neurons: [Int]) {
        let l = spec.depth
        var vDim = (0..<l).map { spec.vHeadDim - Int(state.committed[l + $0]) }
        var neurons = (0..<l).map { spec.mlpHidden - Int(state.committed[2 * l + $0]) }
        let grids = latency.map { (WidthGrid(points: $0.vDimGrid), WidthGrid(points: $0.neuronGrid)) }
            ?? (roundTo > 1 ? (WidthGrid(roundTo: roundTo, dense: spec.vHeadDim),
                               WidthGrid(roundTo: roundTo, dense: spec.mlpHidden)) : nil)
        if let (dimGrid, neuronGrid) = grids {
            vDim = vDim.map { dimGrid.nearest($0) }
            neurons = neurons.map { neuronGrid.nearest($0) }
            fitBudget(scores: scores, grids: (dimGrid, neuronGrid), decisions: decisions, vDim: &vDim, neurons: &neurons)
        }
        return (vDim, neurons)
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
    /// budget, the width step with the most cost saved per unit of normalised score lost is
    /// taken away, down to the smallest allowed width. If even that cannot meet the budget the
    /// smallest such plan is returned, over budget. The result is the plan and its exact cost.
    public func plan(scores: GroupScores, roundTo: Int, into out: GroupOutputs) throws(UVCError) -> (ArchPlan, Double) {
        try scores.validate(for: spec)
        try out.validate(for: spec, names: ("head_mask", "dim_mask", "neuron_mask"))
        try require(roundTo >= 1 && roundTo <= 1 << 20, "round_to", "must be an integer >= 1, got \(roundTo)")
        try require(latency == nil || roundTo == 1, "round_to", "a latency budget snaps widths to the table's grid; "
                    + "leave round_to at 1 (got \(roundTo))")
        let l = spec.depth
        let decisions = gateDecisions()
        let (vDim, neurons) = widths(scores: scores, roundTo: roundTo, decisions: decisions)
        let attention = { (layer: Int) in decisions[2 * layer] == 1 }
        let mlp = { (layer: Int) in decisions[2 * layer + 1] == 1 }
        keepMasks(scores: scores, removing: { kind, layer in
            switch kind {
            case .heads: Int(state.committed[layer])
            case .dims: spec.vHeadDim - vDim[layer]
            case .neurons: spec.mlpHidden - neurons[layer]
            }
        }, attention: attention, mlp: mlp, into: out)
        let tokens = committedTokens
        let layers = (0..<l).map { layer in
            LayerPlan(heads: attention(layer) ? spec.numHeads - Int(state.committed[layer]) : 0,
                      vDim: attention(layer) ? vDim[layer] : 0, neurons: mlp(layer) ? neurons[layer] : 0,
                      attention: attention(layer), mlp: mlp(layer), tokens: tokens[layer])
        }
        let plan = ArchPlan(layers: layers)
        return (plan, exactCost(plan))
    }

    /// Greedy budget repair after rounding: takes away one width step at a time.
    private func fitBudget(scores: GroupScores, grids: (dims: WidthGrid, neurons: WidthGrid), decisions: [Double],
                           vDim: inout [Int], neurons: inout [Int]) {
        let l = spec.depth, h = spec.numHeads, dv = spec.vHeadDim, m = spec.mlpHidden
        // Per layer, normalised scores sorted high to low: neurons, and value dims averaged
        // over the kept heads (rank i = the i-th best dim of each kept head).
        var neuronRanks: [[Double]] = [], dimRanks: [[Double]] = []
        var scratch = [Double](repeating: 0, count: h), keptHeadIndices = [Int](repeating: 0, count: h)
        for layer in 0..<l {
            let row = Array(scores.neurons[layer * m..<(layer + 1) * m]).sorted(by: >)
            let mean = row.reduce(0, +) / Double(m)
            neuronRanks.append(row.map { mean > 0 ? $0 / mean : 0 })
            let keptCount = scratch.withUnsafeMutableBufferPointer { sc in
                keptHeadIndices.withUnsafeMutableBufferPointer {
                    keptHeads(UnsafeBufferPointer(rebasing: scores.heads[layer * h..<(layer + 1) * h]),
                              removing: Int(state.committed[layer]), into: $0, scratch: sc)
                }
            }
            var ranks = [Double](repeating: 0, count: dv), total = 0.0, kept = 0
            for head in keptHeadIndices[0..<keptCount] {
                let dims = Array(scores.dims[(layer * h + head) * dv..<(layer * h + head + 1) * dv]).sorted(by: >)
                for (i, v) in dims.enumerated() { ranks[i] += v }
                total += dims.reduce(0, +)
                kept += 1
            }
            let dimMean = total / Double(kept * dv)
            dimRanks.append(ranks.map { dimMean > 0 ? $0 / Double(kept) / dimMean : 0 })
        }
        func macs() -> Double {
            var removal = state.committed
            for layer in 0..<l {
                removal[l + layer] = Double(dv - vDim[layer])
                removal[2 * l + layer] = Double(m - neurons[layer])
            }
            return evaluate(relaxedInputs(removal: removal, tokenRemoval: state.tokenCommitted, gates: decisions)).macs
        }
        var current = macs()
        while current > budgetMACs {
            var best: (ratio: Double, layer: Int, isDims: Bool, width: Int, macs: Double)?
            for layer in 0..<l {
                for isDims in [true, false] where decisions[2 * layer + (isDims ? 0 : 1)] == 1 {
                    let width = isDims ? vDim[layer] : neurons[layer]
                    guard let lower = (isDims ? grids.dims : grids.neurons).nextLower(width) else { continue }
                    let ranks = isDims ? dimRanks[layer] : neuronRanks[layer]
                    let lost = ranks[lower..<width].reduce(0, +)
                    if isDims { vDim[layer] = lower } else { neurons[layer] = lower }
                    let after = macs()
                    if isDims { vDim[layer] = width } else { neurons[layer] = width }
                    let ratio = (current - after) / (lost + 1e-12)
                    if best == nil || ratio > best!.ratio { best = (ratio, layer, isDims, lower, after) }
                }
            }
            guard let step = best else { return }
            if step.isDims { vDim[step.layer] = step.width } else { neurons[step.layer] = step.width }
            current = step.macs
        }
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
}
