import XCTest
@testable import UVCNative

/// Token pruning in the solver: the schedule's rules, the projection onto the removal cap, the
/// state's token fields, and the plan carrying the schedule at its exact cost.
final class SolverTokenTests: XCTestCase {
    /// 3 blocks of 17 tokens (16 patches, a class token); tokens and part gates on.
    private func solver(budget: Double = 0.5) throws -> Solver {
        try Solver(spec: try smallSolverSpec(), convention: .uvc,
                   config: SolverConfig(budget: budget, pruneTokens: true, gateGranularity: .part, warmupEpochs: 0),
                   seed: 1)
    }

    func testScheduleNeverIncreasesSkipsBlocksWithoutAttentionAndStopsAtPrefixPlusTwo() throws {
        var s = try solver()
        XCTAssertEqual(s.tokenSchedule([3, 4.5]), [17, 14, 9.5])
        XCTAssertEqual(s.tokenSchedule([10, 10]), [17, 7, 3], "a block keeps the class token, one patch, the fused one")
        s.state.logits[0] = -5  // block 0's MHSA is skipped: it has no class attention to drop tokens by
        XCTAssertEqual(s.tokenSchedule([3, 4.5]), [17, 17, 12.5])
        s.state.logits[1] = -5  // its MLP being skipped too changes nothing more
        XCTAssertEqual(s.tokenSchedule([3, 4.5]), [17, 17, 12.5])
        let plain = try Solver(spec: s.spec, convention: .uvc, config: SolverConfig(), seed: 1)
        XCTAssertEqual(plain.tokenSchedule([]), [17, 17, 17])
    }

    func testProjectionOntoTheCappedSetIsEuclidean() {
        var r = [5.0, -1, 3, 0.5]
        Solver.projectCapped(&r, cap: 6)
        // θ = 1: 5 − 1 + 3 − 1 = 6; the others are below θ.
        XCTAssertEqual(r, [4, 0, 2, 0])
        var inside = [1.0, 2, -0.5]
        Solver.projectCapped(&inside, cap: 6)
        XCTAssertEqual(inside, [1, 2, 0], "inside the cap only the sign constraint acts")
        var rng = Xoshiro256StarStar(seed: 7)
        for _ in 0..<200 {
            let v = (0..<5).map { _ in 10 * rng.nextOpenUnit() - 2 }
            var p = v
            Solver.projectCapped(&p, cap: 7)
            XCTAssertLessThanOrEqual(p.reduce(0, +), 7 + 1e-12)
            // Optimality: no feasible point along the segment to a random feasible point is closer to v.
            var q = (0..<5).map { _ in rng.nextOpenUnit() }
            let scale = min(1, 7 / q.reduce(0, +))
            q = q.map { $0 * scale }
            let d = zip(p, v).map { ($0 - $1) * ($0 - $1) }.reduce(0, +)
            for t in [0.01, 0.1, 0.5] {
                let m = zip(p, q).map { (1 - t) * $0 + t * $1 }
                XCTAssertGreaterThanOrEqual(zip(m, v).map { ($0 - $1) * ($0 - $1) }.reduce(0, +), d - 1e-9)
            }
        }
    }

    func testTokenFieldsAreStoredCheckedAndSizedByTheConfig() throws {
        let spec = try smallSolverSpec()
        let config = try SolverConfig(pruneTokens: true)
        XCTAssertEqual(SolverState.Field.tokenRemoval.count(spec, config), 2)
        XCTAssertEqual(SolverState.Field.tokenDuals.count(spec, try SolverConfig()), 0)
        let state = SolverState(spec: spec, config: config, seed: 1)
        XCTAssertEqual(state.tokenDuals, [1, 1])
        for (field, value, name) in [(0, -1.0, "state.token_removal"), (0, 15, "state.token_removal"),
                                     (1, 2.5, "state.token_committed"), (2, -0.1, "state.token_duals")] {
            var bad = state
            switch field {
            case 0: bad.tokenRemoval[1] = value
            case 1: bad.tokenCommitted[0] = value
            default: bad.tokenDuals[0] = value
            }
            XCTAssertThrowsError(try Solver(spec: spec, convention: .uvc, config: config, state: bad)) {
                XCTAssertEqual(($0 as? UVCError)?.argument, name)
            }
        }
        let noClassToken = try ViTSpec(depth: 3, embedDim: 24, numHeads: 3, qkHeadDim: 8, vHeadDim: 8, mlpHidden: 32,
                                       patchSize: 4, imageHeight: 16, imageWidth: 16, prefixTokens: 0, numClasses: 10)
        XCTAssertNoThrow(try Solver(spec: noClassToken, convention: .uvc, config: config, seed: 0),
                         "without a class token, tokens are ranked by the attention they receive")
        let onePatch = try ViTSpec(depth: 3, embedDim: 24, numHeads: 3, qkHeadDim: 8, vHeadDim: 8, mlpHidden: 32,
                                   patchSize: 8, imageHeight: 16, imageWidth: 8, numClasses: 10)
        XCTAssertThrowsError(try Solver(spec: onePatch, convention: .uvc, config: config, seed: 0)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "prune_tokens")
        }
    }

    func testThePlanCarriesTheCommittedScheduleAtItsExactCost() throws {
        var s = try solver()
        s.state.tokenRemoval = [4.4, 2.2]
        s.state.tokenCommitted = [4, 2]
        var rng = Xoshiro256StarStar(seed: 2)
        let scores = GroupData(s.spec, &rng)
        var masks = GroupData(s.spec, fill: -1)
        let (plan, macs) = try scores.withScores { sc in try masks.withOutputs { try s.plan(scores: sc, roundTo: 1, into: $0) } }
        XCTAssertEqual(plan.layers.map(\.tokens), [17, 13, 11])
        XCTAssertEqual(s.committedTokens, [17, 13, 11])
        XCTAssertNoThrow(try plan.validate(for: s.spec))
        XCTAssertEqual(macs, s.cost.exactTotal(plan))
        XCTAssertEqual(macs, s.planMACs(), accuracy: 1e-6)
        XCTAssertLessThan(s.constraintMACs(), s.planMACs(), "the continuous removals drop a little more")
    }

    func testTokenCountsMoveUnderTheBudgetAndResumeBitIdentically() throws {
        var rng = Xoshiro256StarStar(seed: 3)
        let spec = try smallSolverSpec()
        let scores = GroupData(spec, &rng)
        // Class attention rows: the class token 0.1, the 16 patches decaying.
        var tokenScores = [Double](repeating: 0, count: 3 * 17)
        for l in 0..<3 {
            tokenScores[l * 17] = 0.1
            for j in 1..<17 { tokenScores[l * 17 + j] = 0.9 / Double(j * (l + 1)) }
        }
        func run(_ s: inout Solver, _ steps: Range<Int>) throws {
            for t in steps {
                let epoch = Double(t) / 20
                let gates = try s.sample(epoch: epoch)
                var factors = GroupData(s.spec, fill: -1), copy = factors
                try scores.withScores { sc in
                    try factors.withOutputs { f in
                        try copy.withOutputs { c in
                            try gates.map { 0.5 - $0 }.withUnsafeBufferPointer { g in
                                try tokenScores.withUnsafeBufferPointer {
                                    try s.step(scores: sc, gateGradient: g, tokenScores: $0, learningRate: 0.01,
                                               epoch: epoch, factors: f, scoresCopy: c)
                                }
                            }
                        }
                    }
                }
            }
        }
        var whole = try solver(budget: 0.4)
        try run(&whole, 0..<60)
        XCTAssertGreaterThan(whole.state.tokenRemoval.reduce(0, +), 1, "the budget term moved the token counts")
        var first = try solver(budget: 0.4)
        try run(&first, 0..<25)
        var doubles = [Double](repeating: .nan, count: SolverState.encodedCount(spec, first.config))
        var words = [Int64](repeating: 0, count: SolverState.rngWordCount)
        doubles.withUnsafeMutableBufferPointer { d in words.withUnsafeMutableBufferPointer { first.state.encode(into: d, words: $0) } }
        let restored = try doubles.withUnsafeBufferPointer { d in
            try words.withUnsafeBufferPointer { try SolverState(encoded: d, words: $0, spec: spec, config: first.config) }
        }
        XCTAssertEqual(restored, first.state)
        var resumed = try Solver(spec: spec, convention: .uvc, config: first.config, state: restored)
        try run(&resumed, 25..<60)
        XCTAssertEqual(resumed.state, whole.state)
    }
}
