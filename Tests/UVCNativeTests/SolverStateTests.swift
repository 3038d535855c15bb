import XCTest
@testable import UVCNative

/// Configuration checks, state encoding, determinism and resume.
final class SolverStateTests: XCTestCase {
    private func encoded(_ config: SolverConfig) -> [Double] {
        var e = [Double](repeating: 0, count: SolverConfig.Field.allCases.count)
        for f in SolverConfig.Field.allCases {
            e[f.rawValue] = switch f {
            case .budget: config.budget
            case .pruneHeads: config.prune[0] ? 1 : 0
            case .pruneDims: config.prune[1] ? 1 : 0
            case .pruneNeurons: config.prune[2] ? 1 : 0
            case .skipBlocks: config.skipBlocks ? 1 : 0
            case .gateGranularity: Double(config.gateGranularity.rawValue)
            case .gateSampler: Double(config.gateSampler.rawValue)
            case .straightThrough: config.straightThrough ? 1 : 0
            case .warmupEpochs: config.warmupEpochs
            case .lrHeads: config.countLR[0]
            case .lrDims: config.countLR[1]
            case .lrNeurons: config.countLR[2]
            case .hysteresis: config.hysteresis
            case .gateLR: config.gateLR
            case .gatingWeight: config.gatingWeight
            case .gatingInterval: Double(config.gatingInterval)
            case .gateMomentum: config.gateMomentum
            case .gateInit: config.gateInit
            case .zLR: config.zLR
            case .zLRGamma: config.zLRGamma
            case .zGradClip: config.zGradClip
            case .zInit: config.zInit
            case .dualLR: config.dualLR
            case .dualInit: config.dualInit
            case .tau: config.tau
            case .tauDecay: config.tauDecay
            case .tauMin: config.tauMin
            case .eps: config.eps
            case .epsDecay: config.epsDecay
            case .pruneTokens: config.pruneTokens ? 1 : 0
            case .lrTokens: config.tokenLR
            case .budgetDamping: config.budgetDamping
            case .qkKeep: config.qkKeep
            }
        }
        return e
    }

    private func decode(_ e: [Double], schedule: [Double] = [1, 5]) throws -> SolverConfig {
        try e.withUnsafeBufferPointer { eb in
            try schedule.withUnsafeBufferPointer { try SolverConfig(encoded: eb, schedule: $0) }
        }
    }

    func testEncodingRoundTripsTheDefaults() throws {
        let config = try SolverConfig()
        XCTAssertEqual(try decode(encoded(config), schedule: [1, 5, 9, 13, 17]), config)
    }

    func testEveryOutOfRangeFieldIsRefusedByItsPythonName() throws {
        let base = encoded(try SolverConfig())
        let bad: [(SolverConfig.Field, Double)] = [
            (.budget, 0), (.budget, 1.01), (.budget, .nan), (.pruneHeads, 0.5), (.pruneDims, 2), (.pruneNeurons, -1),
            (.skipBlocks, 3), (.gateGranularity, 2), (.gateGranularity, 0.5), (.gateSampler, 3), (.straightThrough, .nan),
            (.warmupEpochs, -1), (.lrHeads, -0.01), (.lrDims, .infinity), (.lrNeurons, 1.5), (.hysteresis, 0.5),
            (.hysteresis, -0.1), (.gateLR, -1), (.gatingWeight, -1), (.gatingInterval, 0), (.gatingInterval, 2.5),
            (.gateMomentum, 1), (.gateInit, .nan), (.zLR, -0.1), (.zLRGamma, 0), (.zGradClip, 0), (.zInit, -1),
            (.dualLR, -1), (.dualInit, .infinity), (.tau, 0), (.tauDecay, 1.5), (.tauMin, 0), (.tauMin, 0.6),
            (.eps, 0), (.epsDecay, 0), (.pruneTokens, 0.5), (.lrTokens, -0.1), (.lrTokens, 1.5),
            (.budgetDamping, -1), (.budgetDamping, .nan),
        ]
        for (field, value) in bad {
            var e = base
            e[field.rawValue] = value
            XCTAssertThrowsError(try decode(e), "\(field) = \(value)") {
                XCTAssertEqual(($0 as? UVCError)?.argument, field.name, "\(field) = \(value)")
            }
        }
        XCTAssertThrowsError(try decode(base, schedule: [1, -2])) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "zlr_schedule")
        }
        XCTAssertThrowsError(try decode(Array(base.dropLast()))) { XCTAssertEqual(($0 as? UVCError)?.argument, "config") }
    }

    func testUnreachableBudgetIsRefused() throws {
        let spec = try smallSolverSpec()
        // Without gates, one head, dim and neuron per layer still cost the patch embedding and more.
        XCTAssertThrowsError(try Solver(spec: spec, convention: .uvc, config: SolverConfig(budget: 0.05, skipBlocks: false),
                                        seed: 0)) { XCTAssertEqual(($0 as? UVCError)?.argument, "budget") }
        XCTAssertThrowsError(try Solver(spec: spec, convention: .uvc,
                                        config: SolverConfig(budget: 0.9, prune: [false, false, false], skipBlocks: false),
                                        seed: 0)) { XCTAssertEqual(($0 as? UVCError)?.argument, "budget") }
        // With gates every block can go: only the patch embedding (7.2 % here) must stay.
        XCTAssertNoThrow(try Solver(spec: spec, convention: .uvc, config: SolverConfig(budget: 0.08), seed: 0))
    }

    func testBadScoresAndArgumentsAreRefusedByName() throws {
        var s = try Solver(spec: try smallSolverSpec(), convention: .uvc, config: SolverConfig(warmupEpochs: 0), seed: 0)
        var rng = Xoshiro256StarStar(seed: 1)
        let good = GroupData(s.spec, &rng)
        var nan = good
        nan.dims[5] = .nan
        var negative = good
        negative.neurons[0] = -1
        var short = good
        short.heads.removeLast()
        for (scores, name) in [(nan, "dim_scores"), (negative, "neuron_scores"), (short, "head_scores")] {
            let before = s.state
            XCTAssertThrowsError(try s.step(scores, epoch: 1)) { XCTAssertEqual(($0 as? UVCError)?.argument, name) }
            XCTAssertEqual(s.state, before, "a refused step changes nothing")
        }
        XCTAssertThrowsError(try s.step(good, lr: -1, epoch: 1)) { XCTAssertEqual(($0 as? UVCError)?.argument, "lr") }
        XCTAssertThrowsError(try s.step(good, epoch: .nan)) { XCTAssertEqual(($0 as? UVCError)?.argument, "epoch") }
        XCTAssertThrowsError(try s.step(good, gateGradient: [1, 2], epoch: 1)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "gate_grad")
        }
        XCTAssertThrowsError(try s.step(good, gateGradient: [Double](repeating: .infinity, count: 6), epoch: 1)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "gate_grad")
        }
        XCTAssertThrowsError(try s.sample(epoch: -1)) { XCTAssertEqual(($0 as? UVCError)?.argument, "epoch") }
    }

    /// A short run that moves every part of the state: counts, duals, z, gates, generator.
    private func run(_ s: inout Solver, steps: Range<Int>, scores: GroupData) throws {
        for t in steps {
            let epoch = Double(t) / 20
            let gates = try s.sample(epoch: epoch)
            _ = try s.step(scores, gateGradient: gates.map { 0.5 - $0 }, lr: 0.01, epoch: epoch)
        }
    }

    private func config() throws -> SolverConfig {
        try SolverConfig(budget: 0.5, gateGranularity: .part, warmupEpochs: 0.5, countLR: [0.05, 0.05, 0.05],
                         gatingInterval: 3, zLRSchedule: [1, 2])
    }

    func testEncodeDecodeIsExactAndResumeIsBitIdentical() throws {
        let spec = try smallSolverSpec()
        var rng = Xoshiro256StarStar(seed: 2)
        let scores = GroupData(spec, &rng)
        var whole = try Solver(spec: spec, convention: .uvc, config: config(), seed: 9)
        try run(&whole, steps: 0..<60, scores: scores)

        var first = try Solver(spec: spec, convention: .uvc, config: config(), seed: 9)
        try run(&first, steps: 0..<25, scores: scores)
        var doubles = [Double](repeating: .nan, count: SolverState.encodedCount(spec, try config()))
        var words = [Int64](repeating: 0, count: SolverState.rngWordCount)
        doubles.withUnsafeMutableBufferPointer { d in words.withUnsafeMutableBufferPointer { first.state.encode(into: d, words: $0) } }
        let restored = try doubles.withUnsafeBufferPointer { d in
            try words.withUnsafeBufferPointer { try SolverState(encoded: d, words: $0, spec: spec, config: config()) }
        }
        XCTAssertEqual(restored, first.state)
        var resumed = try Solver(spec: spec, convention: .uvc, config: config(), state: restored)
        try run(&resumed, steps: 25..<60, scores: scores)
        XCTAssertEqual(resumed.state, whole.state)
        XCTAssertGreaterThan(whole.state.z, 0)
        XCTAssertGreaterThan(whole.state.searchSteps, 0)
        XCTAssertNotEqual(whole.state.logits, try SolverState(spec: spec, config: config(), seed: 9).logits)
    }

    func testCorruptStatesAreRefused() throws {
        let spec = try smallSolverSpec()
        let state = try SolverState(spec: spec, config: config(), seed: 1)
        var bad = state
        bad.removal[0] = 3
        XCTAssertThrowsError(try Solver(spec: spec, convention: .uvc, config: config(), state: bad)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "state.removal")
        }
        bad = state
        bad.committed[7] = 2.5
        XCTAssertThrowsError(try Solver(spec: spec, convention: .uvc, config: config(), state: bad)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "state.committed")
        }
        bad = state
        bad.z = -1
        XCTAssertThrowsError(try Solver(spec: spec, convention: .uvc, config: config(), state: bad)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "state.z")
        }
        bad = state
        bad.logits.removeLast()
        XCTAssertThrowsError(try Solver(spec: spec, convention: .uvc, config: config(), state: bad)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "state")
        }
    }

    func testIdenticalInputsGiveIdenticalStatesAndSeedsMatter() throws {
        let spec = try smallSolverSpec()
        var rng = Xoshiro256StarStar(seed: 3)
        let scores = GroupData(spec, &rng)
        var a = try Solver(spec: spec, convention: .uvc, config: config(), seed: 4)
        var b = try Solver(spec: spec, convention: .uvc, config: config(), seed: 4)
        var c = try Solver(spec: spec, convention: .uvc, config: config(), seed: 5)
        try run(&a, steps: 0..<40, scores: scores)
        try run(&b, steps: 0..<40, scores: scores)
        try run(&c, steps: 0..<40, scores: scores)
        XCTAssertEqual(a.state, b.state)
        XCTAssertNotEqual(a.state.rng, c.state.rng)
    }
}
