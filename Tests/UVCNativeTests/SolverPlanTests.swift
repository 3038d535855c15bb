import XCTest
@testable import UVCNative

/// Keep masks and the exported plan against the committed counts, and width rounding.
final class SolverPlanTests: XCTestCase {
    /// 4 blocks, 4 heads of 16 value dims, 96 neurons: widths worth rounding to 8.
    private func spec() throws -> ViTSpec {
        try ViTSpec(depth: 4, embedDim: 64, numHeads: 4, qkHeadDim: 16, vHeadDim: 16, mlpHidden: 96,
                    patchSize: 4, imageHeight: 16, imageWidth: 16, numClasses: 10)
    }

    private func lowest(_ row: ArraySlice<Double>, _ k: Int) -> Set<Int> {
        let r = Array(row)
        return Set(r.indices.sorted { (r[$0], $0) < (r[$1], $1) }.prefix(k))
    }

    private func masks(_ s: Solver, _ scores: GroupData) throws -> GroupData {
        var out = GroupData(s.spec, fill: -1)
        try scores.withScores { sc in try out.withOutputs { try s.masks(scores: sc, into: $0) } }
        return out
    }

    private func plan(_ s: Solver, _ scores: GroupData, roundTo: Int) throws -> (ArchPlan, Double, GroupData) {
        var out = GroupData(s.spec, fill: -1)
        let (p, macs) = try scores.withScores { sc in try out.withOutputs { try s.plan(scores: sc, roundTo: roundTo, into: $0) } }
        return (p, macs, out)
    }

    func testMasksAreAllOnesBeforeTheSearchMoves() throws {
        let s = try Solver(spec: try spec(), convention: .uvc, config: SolverConfig(), seed: 0)
        var rng = Xoshiro256StarStar(seed: 1)
        XCTAssertEqual(try masks(s, GroupData(s.spec, &rng)), GroupData(s.spec, fill: 1))
    }

    func testMasksRemoveTheCommittedNumberOfLowestScoringGroups() throws {
        var s = try Solver(spec: try spec(), convention: .uvc, config: SolverConfig(), seed: 0)
        s.state.committed = [0, 1, 3, 2, 5, 0, 15, 9, 40, 95, 0, 12]
        var rng = Xoshiro256StarStar(seed: 2)
        let scores = GroupData(s.spec, &rng)
        let m = try masks(s, scores)
        for layer in 0..<4 {
            let removedHeads = lowest(scores.heads[(layer * 4)..<((layer + 1) * 4)], Int(s.state.committed[layer]))
            for head in 0..<4 {
                XCTAssertEqual(m.heads[layer * 4 + head], removedHeads.contains(head) ? 0 : 1)
                let row = (layer * 4 + head) * 16
                let removedDims = lowest(scores.dims[row..<(row + 16)], Int(s.state.committed[4 + layer]))
                for j in 0..<16 {
                    let kept = !removedHeads.contains(head) && !removedDims.contains(j)
                    XCTAssertEqual(m.dims[row + j], kept ? 1 : 0, "a removed head keeps no dims")
                }
            }
            let removedNeurons = lowest(scores.neurons[(layer * 96)..<((layer + 1) * 96)], Int(s.state.committed[8 + layer]))
            for j in 0..<96 { XCTAssertEqual(m.neurons[layer * 96 + j], removedNeurons.contains(j) ? 0 : 1) }
        }
    }

    func testPlanFollowsCountsAndGateDecisionsAndCostsWhatTheStateSays() throws {
        var s = try Solver(spec: try spec(), convention: .fvcore, config: SolverConfig(gateGranularity: .part), seed: 0)
        s.state.committed = [0, 1, 3, 2, 5, 0, 15, 9, 40, 95, 0, 12]
        s.state.logits = [2, 2, -1, 2, 2, -3, 0.5, 2]
        var rng = Xoshiro256StarStar(seed: 3)
        let scores = GroupData(s.spec, &rng)
        let (p, macs, m) = try plan(s, scores, roundTo: 1)
        XCTAssertEqual(p.layers.map(\.attention), [true, false, true, true])
        XCTAssertEqual(p.layers.map(\.mlp), [true, true, false, true])
        XCTAssertEqual(p.layers.map(\.heads), [4, 0, 1, 2])
        XCTAssertEqual(p.layers.map(\.vDim), [11, 0, 1, 7])
        XCTAssertEqual(p.layers.map(\.neurons), [56, 1, 0, 84])
        XCTAssertEqual(p.layers.map(\.tokens), [17, 17, 17, 17])
        XCTAssertNoThrow(try p.validate(for: s.spec))
        XCTAssertEqual(macs, s.cost.exactTotal(p))
        XCTAssertEqual(macs, s.planMACs(), accuracy: 1e-6)
        // The plan's masks keep exactly its counts; skipped parts keep nothing.
        for (layer, lp) in p.layers.enumerated() {
            XCTAssertEqual(m.heads[(layer * 4)..<((layer + 1) * 4)].reduce(0, +), Double(lp.heads))
            XCTAssertEqual(m.dims[(layer * 64)..<((layer + 1) * 64)].reduce(0, +), Double(lp.heads * lp.vDim))
            XCTAssertEqual(m.neurons[(layer * 96)..<((layer + 1) * 96)].reduce(0, +), Double(lp.neurons))
        }
        // Where a part runs, the plan's masks are the training masks.
        let train = try masks(s, scores)
        XCTAssertEqual(Array(m.neurons[0..<96]), Array(train.neurons[0..<96]))
        XCTAssertEqual(Array(m.dims[0..<64]), Array(train.dims[0..<64]))
    }

    func testRoundingGivesMultiplesOfEightWithinTheBudget() throws {
        for budget in [0.35, 0.5, 0.8] {
            var s = try Solver(spec: try spec(), convention: .uvc, config: SolverConfig(budget: budget), seed: 0)
            var rng = Xoshiro256StarStar(seed: 4)
            let scores = GroupData(s.spec, &rng)
            for t in 0..<400 {
                let epoch = 5 + Double(t) / 50
                let gates = try s.sample(epoch: epoch)
                _ = try s.step(scores, gateGradient: gates.map { $0 - 2 }, epoch: epoch)
            }
            let (rounded, macs, m) = try plan(s, scores, roundTo: 8)
            XCTAssertLessThanOrEqual(macs, s.budgetMACs, "budget \(budget)")
            XCTAssertGreaterThan(macs, 0.9 * s.budgetMACs, "budget \(budget): trimming stops at the budget")
            let (raw, _, _) = try plan(s, scores, roundTo: 1)
            for (r, l) in zip(rounded.layers, raw.layers) {
                XCTAssertEqual(r.heads, l.heads)
                XCTAssertEqual(r.attention, l.attention)
                if r.attention { XCTAssertEqual(r.vDim % 8, 0) }
                if r.mlp { XCTAssertEqual(r.neurons % 8, 0) }
            }
            for (layer, lp) in rounded.layers.enumerated() {
                XCTAssertEqual(m.neurons[(layer * 96)..<((layer + 1) * 96)].reduce(0, +), Double(lp.neurons))
            }
        }
    }

    private func fitted(_ s: Solver, _ scores: GroupData) throws -> (ArchPlan, Double, GroupData) {
        var out = GroupData(s.spec, fill: -1)
        let (p, macs) = try scores.withScores { sc in
            try out.withOutputs { try s.plan(scores: sc, roundTo: 1, fit: true, into: $0) }
        }
        return (p, macs, out)
    }

    /// `plan` with one layer one value dim (per kept head) or one neuron wider.
    private func widened(_ p: ArchPlan, layer: Int, dims: Int = 0, neurons: Int = 0) -> ArchPlan {
        var layers = p.layers
        let l = layers[layer]
        layers[layer] = LayerPlan(heads: l.heads, qkDim: l.qkDim, vDim: l.vDim + dims, neurons: l.neurons + neurons,
                                  attention: l.attention, mlp: l.mlp, tokens: l.tokens)
        return ArchPlan(layers: layers)
    }

    func testFitSpendsTheBudgetFromBelowAndFromAbove() throws {
        // Under the budget (many units removed) and over it (few removed), budget 0.5.
        for committed: [Double] in [[1, 1, 2, 1, 8, 6, 9, 8, 70, 60, 75, 66], [0, 0, 1, 0, 1, 0, 2, 1, 5, 3, 8, 0]] {
            var s = try Solver(spec: try spec(), convention: .fvcore, config: SolverConfig(budget: 0.5), seed: 0)
            s.state.committed = committed
            var rng = Xoshiro256StarStar(seed: 6)
            let scores = GroupData(s.spec, &rng)
            let (raw, rawMACs, _) = try plan(s, scores, roundTo: 1)
            let (fit, macs, m) = try fitted(s, scores)
            XCTAssertLessThanOrEqual(macs, s.budgetMACs)
            XCTAssertEqual(macs, s.cost.exactTotal(fit))
            let under = rawMACs < s.budgetMACs
            for (f, r) in zip(fit.layers, raw.layers) {
                XCTAssertEqual(f.heads, r.heads, "heads stay")
                XCTAssertEqual(f.attention, r.attention)
                XCTAssertEqual(f.mlp, r.mlp)
                XCTAssertTrue(under ? f.vDim >= r.vDim && f.neurons >= r.neurons
                                    : f.vDim <= r.vDim && f.neurons <= r.neurons, "under: \(under)")
            }
            // Nothing more fits: one more value dim or neuron anywhere exceeds the budget.
            for layer in 0..<4 {
                if fit.layers[layer].heads > 0, fit.layers[layer].vDim < 16 {
                    XCTAssertGreaterThan(s.cost.exactTotal(widened(fit, layer: layer, dims: 1)), s.budgetMACs)
                }
                if fit.layers[layer].neurons < 96 {
                    XCTAssertGreaterThan(s.cost.exactTotal(widened(fit, layer: layer, neurons: 1)), s.budgetMACs)
                }
                // The masks keep the fitted number of the highest-scoring neurons.
                let row = scores.neurons[(layer * 96)..<((layer + 1) * 96)]
                let dropped = lowest(row, 96 - fit.layers[layer].neurons)
                for j in 0..<96 { XCTAssertEqual(m.neurons[layer * 96 + j], dropped.contains(j) ? 0 : 1) }
            }
        }
    }

    /// `qkKeep` prices every running MHSA at the kept q/k width from the first step, and the plan
    /// exports that width; the fit spends the rest of the budget on the kinds the search prunes.
    func testQueryKeyKeepIsPricedFromTheStartAndExported() throws {
        let half = try SolverConfig(budget: 0.5, qkKeep: 0.5)
        XCTAssertEqual(half.keptQKDim(try spec()), 8)
        XCTAssertEqual(try SolverConfig(qkKeep: 0.3).keptQKDim(try spec()), 5, "4.8 rounds to 5")
        XCTAssertEqual(try SolverConfig(qkKeep: 0.01).keptQKDim(try spec()), 1, "at least one")
        var s = try Solver(spec: try spec(), convention: .fvcore, config: half, seed: 0)
        var dense8 = ArchPlan.dense(s.spec)
        for l in 0..<4 { dense8.layers[l].qkDim = 8 }
        XCTAssertEqual(s.constraintMACs(), s.cost.exactTotal(dense8), accuracy: 1e-6 * s.denseMACs)
        XCTAssertLessThan(s.cost.exactTotal(dense8), s.denseMACs)
        s.state.committed = [1, 1, 2, 1, 8, 6, 9, 8, 70, 60, 75, 66]
        var rng = Xoshiro256StarStar(seed: 6)
        let (fit, macs, _) = try fitted(s, GroupData(s.spec, &rng))
        XCTAssertTrue(fit.layers.allSatisfy { !$0.attention || $0.qkDim == 8 })
        XCTAssertEqual(macs, s.cost.exactTotal(fit))
        XCTAssertLessThanOrEqual(macs, s.budgetMACs)
        for bad in [0.0, -0.5, 1.5, .nan] {
            XCTAssertThrowsError(try SolverConfig(qkKeep: bad)) { XCTAssertTrue("\($0)".contains("qk_keep")) }
        }
        // q/k norms normalise over all of a head's dims: such a model keeps them all.
        var normed = try spec()
        normed.qkNorm = true
        XCTAssertThrowsError(try Solver(spec: normed, convention: .fvcore, config: half, seed: 0)) {
            XCTAssertTrue("\($0)".contains("qk_norm"))
        }
        XCTAssertNoThrow(try Solver(spec: normed, convention: .fvcore, config: try SolverConfig(qkKeep: 0.99), seed: 0),
                         "0.99 of 16 rounds to all 16")
    }

    func testFitFillsWhereTheScoreGainedPerMACIsHighest() throws {
        // Layer 2's neurons score ten times the others': the fill widens its MLP first.
        let committed: [Double] = [1, 1, 1, 1, 8, 8, 8, 8, 70, 70, 70, 70]
        var probe = try Solver(spec: try spec(), convention: .fvcore, config: SolverConfig(budget: 0.5), seed: 0)
        probe.state.committed = committed
        var rng = Xoshiro256StarStar(seed: 7)
        var scores = GroupData(probe.spec, &rng)
        for j in (2 * 96)..<(3 * 96) { scores.neurons[j] *= 10 }
        let (raw, rawMACs, _) = try plan(probe, scores, roundTo: 1)
        let neuron = probe.cost.exactTotal(widened(raw, layer: 2, neurons: 1)) - rawMACs
        // Room for 20.5 of layer 2's neurons, not enough for a value dim after 20 of them.
        let budget = (rawMACs + 20.5 * neuron) / probe.denseMACs
        var s = try Solver(spec: probe.spec, convention: .fvcore, config: SolverConfig(budget: budget), seed: 0)
        s.state.committed = committed
        let (fit, _, _) = try fitted(s, scores)
        XCTAssertEqual(fit.layers.map(\.neurons), [26, 26, 46, 26])
        XCTAssertEqual(fit.layers.map(\.vDim), raw.layers.map(\.vDim))
    }

    func testFitLeavesTheKindsTheSearchDoesNotPruneAtFullWidth() throws {
        // Over the budget (few neurons removed) and under it (many), value dims not pruned.
        for committed: [Double] in [[1, 1, 1, 1, 0, 0, 0, 0, 5, 3, 8, 0], [2, 2, 2, 2, 0, 0, 0, 0, 90, 90, 90, 90]] {
            let config = try SolverConfig(budget: 0.5, prune: [true, false, true])
            var s = try Solver(spec: try spec(), convention: .fvcore, config: config, seed: 0)
            s.state.committed = committed
            var rng = Xoshiro256StarStar(seed: 8)
            let (fit, macs, _) = try fitted(s, GroupData(s.spec, &rng))
            XCTAssertEqual(fit.layers.map(\.vDim), [16, 16, 16, 16], "value dims stay whole")
            XCTAssertLessThanOrEqual(macs, s.budgetMACs)
            XCTAssertNotEqual(fit.layers.map(\.neurons), committed[8...].map { 96 - Int($0) }, "the neurons moved")
        }
    }

    func testWidthRoundingSteps() {
        let w = WidthGrid(roundTo: 8, dense: 96), odd = WidthGrid(roundTo: 8, dense: 38)
        let small = WidthGrid(roundTo: 8, dense: 6)
        XCTAssertEqual(w.nearest(3), 8)
        XCTAssertEqual(w.nearest(11), 8)
        XCTAssertEqual(w.nearest(12), 16)
        XCTAssertEqual(w.nearest(95), 96)
        XCTAssertEqual(odd.nearest(37), 38, "the dense width is allowed")
        XCTAssertEqual(small.nearest(5), 5, "a dense width below roundTo is not rounded")
        XCTAssertEqual(w.nextLower(16), 8)
        XCTAssertEqual(w.nextHigher(8), 16)
        XCTAssertEqual(odd.nextHigher(32), 38)
        XCTAssertNil(w.nextHigher(96))
        XCTAssertEqual(WidthGrid(roundTo: 1, dense: 5).points, [1, 2, 3, 4, 5], "round_to 1: every width")
        XCTAssertEqual(odd.nextLower(38), 32)
        XCTAssertNil(w.nextLower(8))
        XCTAssertNil(small.nextLower(5))
        let table = WidthGrid(points: [1, 8, 16, 24, 32])
        XCTAssertEqual(table.nearest(20), 24, "a tie goes to the larger measured width")
        XCTAssertEqual(table.nearest(3), 1)
        XCTAssertEqual(table.nextLower(24), 16)
        XCTAssertNil(table.nextLower(1))
    }

    func testRoundToMustBePositive() throws {
        let s = try Solver(spec: try spec(), convention: .uvc, config: SolverConfig(), seed: 0)
        var rng = Xoshiro256StarStar(seed: 5)
        XCTAssertThrowsError(try plan(s, GroupData(s.spec, &rng), roundTo: 0)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "round_to")
        }
    }
}
