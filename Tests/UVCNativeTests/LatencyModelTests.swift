import XCTest
@testable import UVCNative

/// The latency model against its table: grid points, interpolation, the relaxed latency and its
/// gradient, refused tables, and the solver spending a budget in ms.
final class LatencyModelTests: XCTestCase {
    /// A table for `smallSolverSpec` (3 heads of 8 value dims, 32 neurons): MHSA time rising
    /// with heads and value width, with a slow odd width (5) as real tables have; MLP time with a
    /// step at 17.
    private func table(_ spec: ViTSpec, vDims: [Int] = [1, 2, 4, 5, 6, 8],
                       neurons: [Int] = [1, 8, 16, 17, 24, 32]) throws -> LatencyModel {
        let heads = Array(1...spec.numHeads)
        var attention: [Double] = []
        for h in heads {
            for v in vDims { attention.append(0.2 + 0.05 * Double(h) * Double(v) + (v == 5 ? 0.3 : 0)) }
        }
        let mlp = neurons.map { 0.1 + 0.01 * Double($0) + ($0 >= 17 ? 0.05 : 0) }
        return try LatencyModel(spec: spec, heads: heads, vDims: vDims, neurons: neurons, attention: attention,
                                mlp: mlp, fixed: 0.7)
    }

    private func exact(_ model: LatencyModel, _ plan: ArchPlan) throws -> Double { try model.exactTotal(plan) }

    /// The relaxed latency of `x` and its gradient.
    private func relaxed(_ model: LatencyModel, _ x: [Double]) -> (Double, [Double]) {
        var g = [Double](repeating: 0, count: x.count)
        let v = x.withUnsafeBufferPointer { xb in g.withUnsafeMutableBufferPointer { model.expected(xb, gradient: $0) } }
        return (v, g)
    }

    /// Checks the gradient at `x` against central differences of `step` in every input; returns it.
    @discardableResult
    private func assertFiniteDifferences(_ model: LatencyModel, _ x: [Double], step h: Double,
                                         file: StaticString = #filePath, line: UInt = #line) -> [Double] {
        let grad = relaxed(model, x).1
        for i in x.indices {
            var up = x, down = x
            up[i] += h
            down[i] -= h
            XCTAssertEqual(grad[i], (relaxed(model, up).0 - relaxed(model, down).0) / (2 * h), accuracy: 1e-7,
                           "input \(i)", file: file, line: line)
        }
        return grad
    }

    /// The table timed every MHSA at full q/k width: a plan or relaxed input with narrower
    /// queries and keys is refused, naming the layer, not priced as if they were full.
    func testNarrowQueriesAndKeysAreRefused() throws {
        let spec = try smallSolverSpec()
        let model = try table(spec)
        var plan = ArchPlan.dense(spec)
        plan.layers[1].qkDim = spec.qkHeadDim - 1
        try plan.validate(for: spec)
        XCTAssertThrowsError(try exact(model, plan)) { XCTAssertTrue("\($0)".contains("layer 1 keeps"), "\($0)") }
        plan.layers[1].attention = false
        XCTAssertNoThrow(try exact(model, plan), "a skipped MHSA has no q/k to price")
        var x = relaxedInputs(.dense(spec))
        XCTAssertNoThrow(try x.withUnsafeBufferPointer { try model.validateRelaxed($0) })
        x[RelaxedField.qkDim.rawValue * spec.depth + 2] = 1.5
        XCTAssertThrowsError(try x.withUnsafeBufferPointer { try model.validateRelaxed($0) }) {
            XCTAssertTrue("\($0)".contains("qk_dim[2]"), "\($0)")
        }
    }

    func testGridPointsPriceAtTheTable() throws {
        let spec = try smallSolverSpec()
        let model = try table(spec)
        let plan = ArchPlan(layers: [LayerPlan(heads: 2, qkDim: spec.qkHeadDim, vDim: 5, neurons: 17, tokens: 17),
                                     LayerPlan(heads: 3, qkDim: spec.qkHeadDim, vDim: 8, neurons: 32, attention: false, tokens: 17),
                                     LayerPlan(heads: 1, qkDim: spec.qkHeadDim, vDim: 1, neurons: 1, mlp: false, tokens: 17)])
        try plan.validate(for: spec)
        let a = { (h: Double, v: Double) in 0.2 + 0.05 * h * v + (v == 5 ? 0.3 : 0) }
        let m = { (n: Double) in 0.1 + 0.01 * n + (n >= 17 ? 0.05 : 0) }
        XCTAssertEqual(try exact(model, plan), 0.7 + a(2, 5) + m(17) + m(32) + a(1, 1), accuracy: 1e-12)
        var layers = [Double](repeating: -1, count: 6)
        _ = try layers.withUnsafeMutableBufferPointer { try model.exact(plan, layers: $0) }
        XCTAssertEqual(layers, [a(2, 5), m(17), 0, m(32), a(1, 1), 0])
        XCTAssertEqual(try exact(model, .dense(spec)), 0.7 + 3 * (a(3, 8) + m(32)), accuracy: 1e-12)
    }

    func testBetweenGridPointsTheLineBetweenNeighbours() throws {
        let spec = try smallSolverSpec()
        let model = try table(spec)
        for v in stride(from: 6.0, through: 8.0, by: 0.25) {
            let t = (v - 6) / 2
            let left = model.attentionTime(heads: 2, vDim: 6).ms, right = model.attentionTime(heads: 2, vDim: 8).ms
            let (ms, dh, dv, dn) = model.attentionTime(heads: 2, vDim: v)
            XCTAssertEqual(dn, 0, "one token point: flat in tokens")
            XCTAssertEqual(ms, (1 - t) * left + t * right, accuracy: 1e-12)
            XCTAssertTrue(min(left, right) - 1e-12 <= ms && ms <= max(left, right) + 1e-12, "monotone between points")
            XCTAssertEqual(dv, (right - left) / 2, accuracy: 1e-12)
            XCTAssertEqual(dh, model.attentionTime(heads: 3, vDim: v).ms - ms, accuracy: 1e-12)
        }
        // Bilinear inside a cell: the mean of the four corners at its centre.
        let corners = [(1.0, 2.0), (2.0, 2.0), (1.0, 4.0), (2.0, 4.0)].map { model.attentionTime(heads: $0.0, vDim: $0.1).ms }
        XCTAssertEqual(model.attentionTime(heads: 1.5, vDim: 3).ms, corners.reduce(0, +) / 4, accuracy: 1e-12)
        // The slow odd width: 5 costs more than 6, and 4.5 lies between 4 and 5.
        XCTAssertGreaterThan(model.attentionTime(heads: 3, vDim: 5).ms, model.attentionTime(heads: 3, vDim: 6).ms)
        let (m16, m17) = (model.mlpTime(neurons: 16).ms, model.mlpTime(neurons: 17).ms)
        XCTAssertEqual(model.mlpTime(neurons: 16.5).ms, (m16 + m17) / 2, accuracy: 1e-12)
        XCTAssertEqual(model.mlpTime(neurons: 16.5).dNeurons, m17 - m16, accuracy: 1e-12)
    }

    /// At integer counts on or off the grid and 0/1 gates, the relaxed latency is the exact one.
    func testRelaxedAtPlansEqualsExact() throws {
        let spec = try smallSolverSpec(depth: 4)
        let model = try table(spec)
        var rng = TestRNG(state: 5)
        for _ in 0..<200 {
            let layers = (0..<4).map { _ in
                LayerPlan(heads: rng.int(1...3), qkDim: spec.qkHeadDim, vDim: rng.int(1...8), neurons: rng.int(1...32),
                          attention: rng.int(0...3) != 0, mlp: rng.int(0...3) != 0, tokens: 17)
            }
            let plan = ArchPlan(layers: layers)
            try plan.validate(for: spec)
            let x = relaxedInputs(plan)
            var g = [Double](repeating: 0, count: x.count)
            let relaxed = x.withUnsafeBufferPointer { xb in g.withUnsafeMutableBufferPointer { model.expected(xb, gradient: $0) } }
            XCTAssertEqual(relaxed, try exact(model, plan), accuracy: 1e-12)
        }
    }

    /// Away from grid points the gradient matches central finite differences.
    func testGradientMatchesFiniteDifferences() throws {
        let spec = try smallSolverSpec(depth: 4)
        let model = try table(spec)
        var rng = TestRNG(state: 9)
        let d = spec.depth
        for _ in 0..<50 {
            var x = [Double](repeating: 0, count: RelaxedField.allCases.count * d)
            for l in 0..<d {
                // Cell interiors: fractional parts in [0.1, 0.9] of a unit cell keep h ± step inside one stretch.
                x[RelaxedField.heads.rawValue * d + l] = Double(rng.int(1...2)) + 0.1 + 0.8 * rng.unit()
                x[RelaxedField.vDim.rawValue * d + l] = 6.2 + 1.6 * rng.unit()
                x[RelaxedField.neurons.rawValue * d + l] = 24.5 + 7 * rng.unit()
                x[RelaxedField.attentionGate.rawValue * d + l] = rng.unit()
                x[RelaxedField.mlpGate.rawValue * d + l] = rng.unit()
                x[RelaxedField.tokens.rawValue * d + l] = 17
            }
            assertFiniteDifferences(model, x, step: 1e-4)
        }
    }

    func testTablesThatCannotPriceEveryPlanAreRefused() throws {
        let spec = try smallSolverSpec()
        let heads = [1, 2, 3], v = [1, 4, 8], n = [1, 16, 32]
        let a = [Double](repeating: 1, count: 9), m = [1.0, 1, 1]
        func refused(_ argument: String, _ message: String, _ build: () throws -> LatencyModel) {
            XCTAssertThrowsError(try build()) { error in
                let e = error as? UVCError
                XCTAssertEqual(e?.argument, argument)
                XCTAssertTrue(e?.message.contains(message) ?? false, "\(e?.message ?? "")")
            }
        }
        refused("v_dims", "has no point at 1") {
            try LatencyModel(spec: spec, heads: heads, vDims: [2, 4, 8], neurons: n, attention: a, mlp: m, fixed: 0)
        }
        refused("neurons", "has no point at 32") {
            try LatencyModel(spec: spec, heads: heads, vDims: v, neurons: [1, 16, 24], attention: a, mlp: m, fixed: 0)
        }
        refused("heads", "strictly increasing") {
            try LatencyModel(spec: spec, heads: [1, 3, 3], vDims: v, neurons: n, attention: a, mlp: m, fixed: 0)
        }
        refused("attention_ms", "at heads=2, v_dims=4 it is 0.0") {
            var holes = a
            holes[4] = 0
            return try LatencyModel(spec: spec, heads: heads, vDims: v, neurons: n, attention: holes, mlp: m, fixed: 0)
        }
        refused("mlp_ms", "at neurons=16 it is nan") {
            try LatencyModel(spec: spec, heads: heads, vDims: v, neurons: n, attention: a, mlp: [1, .nan, 1], fixed: 0)
        }
        refused("attention_ms", "expected 3 x 3") {
            try LatencyModel(spec: spec, heads: heads, vDims: v, neurons: n, attention: [1, 1], mlp: m, fixed: 0)
        }
        refused("fixed_ms", "finite and >= 0") {
            try LatencyModel(spec: spec, heads: heads, vDims: v, neurons: n, attention: a, mlp: m, fixed: -1)
        }
        let model = try LatencyModel(spec: spec, heads: heads, vDims: v, neurons: n, attention: a, mlp: m, fixed: 0)
        var drops = ArchPlan.dense(spec)
        drops.layers[1].tokens = 10
        drops.layers[2].tokens = 10
        XCTAssertThrowsError(try model.exactTotal(drops)) { XCTAssertEqual(($0 as? UVCError)?.argument, "plan") }
    }

    /// The solver spends a latency budget: after the search the plan's widths lie on the table's
    /// grid, and its table latency is at most the budget (within one grid step of it).
    func testSolverSpendsAMillisecondBudgetOnTheGrid() throws {
        let spec = try smallSolverSpec(depth: 4)
        let model = try table(spec)
        var s = try Solver(spec: spec, convention: .uvc,
                           config: SolverConfig(budget: 0.6, warmupEpochs: 0.1, countLR: [0.05, 0.05, 0.05]), seed: 3,
                           latency: model)
        XCTAssertEqual(s.denseMACs, try model.exactTotal(.dense(spec)), accuracy: 1e-12)
        XCTAssertEqual(s.unit, "ms")
        var rng = Xoshiro256StarStar(seed: 10)
        let scores = GroupData(s.spec, &rng)
        for t in 0..<1500 {
            let epoch = Double(t) / 100
            let gates = try s.sample(epoch: epoch)
            _ = try s.step(scores, gateGradient: gates.map { $0 - 2 }, epoch: epoch)
        }
        var masks = GroupData(spec, fill: -1)
        let (plan, ms) = try scores.withScores { sc in try masks.withOutputs { try s.plan(scores: sc, roundTo: 1, into: $0) } }
        XCTAssertEqual(ms, try model.exactTotal(plan), accuracy: 1e-12)
        XCTAssertLessThanOrEqual(ms, s.budgetMACs * 1.0001, "the snapped plan meets the budget")
        XCTAssertGreaterThan(ms, s.budgetMACs * 0.75, "and does not throw most of it away")
        for layer in plan.layers {
            if layer.attention { XCTAssertTrue(model.vDimGrid.contains(layer.vDim), "v width \(layer.vDim) is on the grid") }
            if layer.mlp { XCTAssertTrue(model.neuronGrid.contains(layer.neurons), "\(layer.neurons) neurons on the grid") }
        }
        // The training masks keep what the plan exports: the model trains the snapped widths.
        var trainMasks = GroupData(spec, fill: -1)
        try scores.withScores { sc in try trainMasks.withOutputs { try s.masks(scores: sc, into: $0) } }
        for (l, layer) in plan.layers.enumerated() where layer.attention && layer.mlp {
            let dims = trainMasks.dims[(l * 3 * 8)..<((l + 1) * 3 * 8)].reduce(0, +)
            XCTAssertEqual(dims, Double(layer.heads * layer.vDim), "layer \(l)")
            XCTAssertEqual(trainMasks.neurons[(l * 32)..<((l + 1) * 32)].reduce(0, +), Double(layer.neurons))
        }
        XCTAssertThrowsError(try scores.withScores { sc in try masks.withOutputs { try s.plan(scores: sc, roundTo: 8, into: $0) } }) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "round_to")
        }
    }

    func testSolverRefusesATableOfAnotherShapeAndTokenPruning() throws {
        let spec = try smallSolverSpec(depth: 4)
        let other = try table(try smallSolverSpec(depth: 3))
        XCTAssertThrowsError(try Solver(spec: spec, convention: .uvc, config: SolverConfig(), seed: 0, latency: other)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "latency")
        }
        XCTAssertThrowsError(try Solver(spec: spec, convention: .uvc, config: SolverConfig(pruneTokens: true), seed: 0,
                                        latency: try table(spec))) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "prune_tokens")
        }
        XCTAssertThrowsError(try Solver(spec: spec, convention: .uvc, config: SolverConfig(qkKeep: 0.5), seed: 0,
                                        latency: try table(spec))) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "qk_keep")
        }
    }

    // MARK: A token axis

    /// Times linear in the tokens between grid points (so interpolation is exact): A(h, v, n) =
    /// a(h, v)·(0.3 + n/17), M(m, n) = m(m)·(0.2 + n/17), D = 0, 0.05, 0.09 at tokens 3, 9, 17.
    private let tokenGrid = [3, 9, 17], dropMs = [0.0, 0.05, 0.09]
    private func a(_ h: Double, _ v: Double, _ n: Double) -> Double { (0.2 + 0.05 * h * v) * (0.3 + n / 17) }
    private func m(_ k: Double, _ n: Double) -> Double { (0.1 + 0.01 * k) * (0.2 + n / 17) }

    private func tokenTable(_ spec: ViTSpec, tokens: [Int]? = nil) throws -> LatencyModel {
        let heads = Array(1...spec.numHeads), vDims = [1, 4, 8], neurons = [1, 16, 32], t = tokens ?? tokenGrid
        var attention: [Double] = [], mlp: [Double] = []
        for h in heads { for v in vDims { for n in t { attention.append(a(Double(h), Double(v), Double(n))) } } }
        for k in neurons { for n in t { mlp.append(m(Double(k), Double(n))) } }
        return try LatencyModel(spec: spec, heads: heads, vDims: vDims, neurons: neurons, tokens: t,
                                attention: attention, mlp: mlp, drop: Array(dropMs.suffix(t.count)), fixed: 0.7)
    }

    func testATokenAxisPricesEachBlockOnItsTokensAndEachDrop() throws {
        let spec = try smallSolverSpec()
        let model = try tokenTable(spec)
        // Block 0 drops 17 → 9, block 1 drops 9 → 5 (between grid points), block 2 keeps 5.
        let plan = ArchPlan(layers: [LayerPlan(heads: 2, qkDim: spec.qkHeadDim, vDim: 4, neurons: 16, tokens: 17),
                                     LayerPlan(heads: 3, qkDim: spec.qkHeadDim, vDim: 8, neurons: 32, tokens: 9),
                                     LayerPlan(heads: 1, qkDim: spec.qkHeadDim, vDim: 1, neurons: 1, tokens: 5)])
        try plan.validate(for: spec)
        var layers = [Double](repeating: -1, count: 6)
        let total = try layers.withUnsafeMutableBufferPointer { try model.exact(plan, layers: $0) }
        let d5 = 0.05 * (5 - 3) / 6  // D between its 0 at 3 tokens and 0.05 at 9
        let expected = [a(2, 4, 17) + 0.09, m(16, 9), a(3, 8, 9) + 0.05, m(32, 5), a(1, 1, 5), m(1, 5)]
        for (got, want) in zip(layers, expected) { XCTAssertEqual(got, want, accuracy: 1e-12) }
        XCTAssertEqual(total, 0.7 + expected.reduce(0, +), accuracy: 1e-12)
        XCTAssertEqual(model.dropTime(tokens: 5).ms, d5, accuracy: 1e-12)
        // The relaxed latency at the plan's counts is the exact one.
        let x = relaxedInputs(plan)
        var g = [Double](repeating: 0, count: x.count)
        let relaxed = x.withUnsafeBufferPointer { xb in g.withUnsafeMutableBufferPointer { model.expected(xb, gradient: $0) } }
        XCTAssertEqual(relaxed, total, accuracy: 1e-12)
        // Trilinear inside a cell: the mean of its eight corners at the centre.
        var corners = 0.0
        for h in [1.0, 2.0] { for v in [1.0, 4.0] { for n in [3.0, 9.0] { corners += a(h, v, n) } } }
        XCTAssertEqual(model.attentionTime(heads: 1.5, vDim: 2.5, tokens: 6).ms, corners / 8, accuracy: 1e-12)
    }

    func testATokenAxisGradientMatchesFiniteDifferences() throws {
        let spec = try smallSolverSpec(depth: 4)
        let model = try tokenTable(spec)
        let d = spec.depth
        var rng = TestRNG(state: 21)
        for _ in 0..<30 {
            var x = [Double](repeating: 0, count: RelaxedField.allCases.count * d)
            // Strictly decreasing tokens off the grid points: every drop indicator stays put.
            let tokens = [16.5 - rng.unit(), 13.8 - 4 * rng.unit(), 8.7 - 2 * rng.unit(), 5.5 - 2 * rng.unit()]
            for l in 0..<d {
                x[RelaxedField.heads.rawValue * d + l] = 1.1 + 1.8 * rng.unit()
                x[RelaxedField.vDim.rawValue * d + l] = 4.2 + 3.6 * rng.unit()
                x[RelaxedField.neurons.rawValue * d + l] = 16.5 + 15 * rng.unit()
                x[RelaxedField.attentionGate.rawValue * d + l] = rng.unit()
                x[RelaxedField.mlpGate.rawValue * d + l] = rng.unit()
                x[RelaxedField.tokens.rawValue * d + l] = tokens[l]
            }
            let grad = assertFiniteDifferences(model, x, step: 1e-5)
            for l in 0..<d { XCTAssertGreaterThan(grad[RelaxedField.tokens.rawValue * d + l], 0, "fewer tokens, less time") }
        }
    }

    func testTokenGridsAreCheckedAndCountsBelowThemRefused() throws {
        let spec = try smallSolverSpec()
        func refused(_ argument: String, _ message: String, _ build: () throws -> Any) {
            XCTAssertThrowsError(try build()) { error in
                let e = error as? UVCError
                XCTAssertEqual(e?.argument, argument)
                XCTAssertTrue(e?.message.contains(message) ?? false, "\(e?.message ?? "")")
            }
        }
        let heads = [1, 2, 3], v = [1, 4, 8], n = [1, 16, 32]
        refused("tokens", "has no point at 17") {
            try LatencyModel(spec: spec, heads: heads, vDims: v, neurons: n, tokens: [3, 9],
                             attention: .init(repeating: 1, count: 18), mlp: .init(repeating: 1, count: 6), fixed: 0)
        }
        refused("attention_ms", "expected 3 x 3 x 2 times") {
            try LatencyModel(spec: spec, heads: heads, vDims: v, neurons: n, tokens: [9, 17],
                             attention: .init(repeating: 1, count: 9), mlp: .init(repeating: 1, count: 6), fixed: 0)
        }
        refused("mlp_ms", "at neurons=16, tokens=9 it is 0.0") {
            try LatencyModel(spec: spec, heads: heads, vDims: v, neurons: n, tokens: [9, 17],
                             attention: .init(repeating: 1, count: 18), mlp: [1, 1, 0, 1, 1, 1], fixed: 0)
        }
        refused("drop_ms", "at tokens=9 it is -1.0") {
            try LatencyModel(spec: spec, heads: heads, vDims: v, neurons: n, tokens: [9, 17],
                             attention: .init(repeating: 1, count: 18), mlp: .init(repeating: 1, count: 6),
                             drop: [-1, 0], fixed: 0)
        }
        let coarse = try tokenTable(spec, tokens: [9, 17])
        let plan = ArchPlan(layers: [LayerPlan(heads: 3, qkDim: spec.qkHeadDim, vDim: 8, neurons: 32, tokens: 17),
                                     LayerPlan(heads: 3, qkDim: spec.qkHeadDim, vDim: 8, neurons: 32, tokens: 9),
                                     LayerPlan(heads: 3, qkDim: spec.qkHeadDim, vDim: 8, neurons: 32, tokens: 4)])
        refused("plan", "layer 2 takes 4 tokens; the latency table's token grid [9, 17] starts at 9: profile it at 4") {
            try coarse.exactTotal(plan)
        }
        let config = try SolverConfig(pruneTokens: true)
        refused("prune_tokens", "token grid starts at 9, above the 3 tokens a block may keep") {
            try Solver(spec: spec, convention: .uvc, config: config, seed: 0, latency: coarse)
        }
        XCTAssertNoThrow(try Solver(spec: spec, convention: .uvc, config: config, seed: 0, latency: try tokenTable(spec)))
    }

    // MARK: Skipping parts when widths buy no time

    /// A table whose times do not depend on width (a CPU at batch 1): MHSA `attention` ms and
    /// MLP `mlp` ms at every grid point.
    private func flatTable(_ spec: ViTSpec, attention: Double, mlp: Double, fixed: Double = 0.2) throws -> LatencyModel {
        let heads = Array(1...spec.numHeads), vDims = [1, 4, 8], neurons = [1, 16, 32]
        return try LatencyModel(spec: spec, heads: heads, vDims: vDims, neurons: neurons,
                                attention: [Double](repeating: attention, count: heads.count * vDims.count),
                                mlp: [Double](repeating: mlp, count: neurons.count), fixed: fixed)
    }

    /// Drives a session on fixed random scores with a gate gradient that keeps every gate (the
    /// gates alone never close), for `steps` steps of 1/100 epoch; returns the scores.
    private func drive(_ session: SolverSession, steps: Int) throws -> GroupData {
        var rng = Xoshiro256StarStar(seed: 4)
        let scores = GroupData(session.solver.spec, &rng)
        var factors = GroupData(session.solver.spec, fill: -1)
        var gates = [Double](repeating: 0, count: 2 * session.solver.spec.depth)
        for t in 0..<steps {
            let epoch = Double(t) / 100
            try gates.withUnsafeMutableBufferPointer { try session.sampleGates(epoch: epoch, into: $0) }
            let push = gates.map { _ in -1.0 }
            try scores.withScores { sc in
                try factors.withOutputs { f in
                    try push.withUnsafeBufferPointer {
                        try session.step(scores: sc, gateGradient: $0, tokenScores: nil, learningRate: 1e-3,
                                         epoch: epoch, factors: f)
                    }
                }
            }
        }
        return scores
    }

    private func session(_ spec: ViTSpec, _ table: LatencyModel, budget: Double) throws -> SolverSession {
        SolverSession(try Solver(spec: spec, convention: .uvc,
                                 config: SolverConfig(budget: budget, gateGranularity: .part, warmupEpochs: 0.1,
                                                      countLR: [0.05, 0.05, 0.05]),
                                 seed: 3, latency: table))
    }

    /// On a flat table narrowing saves nothing: the plan meets the budget by skipping parts,
    /// keeps the widths the counts give (none narrowed for nothing), and masks, the summary's
    /// decisions and the training gates all follow the skips.
    func testAFlatTableIsMetBySkippingParts() throws {
        let spec = try smallSolverSpec(depth: 4)
        let model = try flatTable(spec, attention: 0.3, mlp: 0.2)
        let s = try session(spec, model, budget: 0.5)
        let scores = try drive(s, steps: 300)
        let solver = s.solver
        XCTAssertEqual(solver.gateDecisions(), [Double](repeating: 1, count: 8), "the gates themselves keep every part")
        var masks = GroupData(spec, fill: -1)
        let (plan, ms) = try scores.withScores { sc in try masks.withOutputs { try solver.plan(scores: sc, roundTo: 1, into: $0) } }
        XCTAssertEqual(ms, try model.exactTotal(plan), accuracy: 1e-12)
        XCTAssertLessThanOrEqual(ms, solver.budgetMACs + 1e-12, "skipping meets the budget (dense 2.2 ms)")
        let skipped = plan.layers.reduce(0) { $0 + ($1.attention ? 0 : 1) + ($1.mlp ? 0 : 1) }
        XCTAssertEqual(skipped, 4, "2.2 ms to at most 1.1 ms: four parts, no more")
        for (l, layer) in plan.layers.enumerated() {
            if layer.mlp { XCTAssertEqual(layer.neurons, (32 - Int(solver.state.committed[2 * 4 + l])).roundedToGrid([1, 16, 32])) }
        }
        // The training masks and eval-mode decisions are the plan's; a skipped part keeps nothing.
        var trainMasks = GroupData(spec, fill: -1)
        try scores.withScores { sc in try trainMasks.withOutputs { try solver.masks(scores: sc, into: $0) } }
        XCTAssertEqual(trainMasks, masks)
        let decisions = scores.withScores { solver.planDecisions(scores: $0) }
        XCTAssertEqual(decisions, plan.layers.flatMap { [$0.attention ? 1.0 : 0, $0.mlp ? 1.0 : 0] })
        var summary = [Double](repeating: 0, count: s.summaryLayout.reduce(0) { $0 + $1.shape.reduce(1, *) })
        try summary.withUnsafeMutableBufferPointer { try s.summary(into: $0) }
        XCTAssertEqual(Array(summary[8..<16]), decisions, "the summary's gates_on are the plan's")
        XCTAssertEqual(summary[summary.count - 5], ms, accuracy: 1e-12, "and its plan cost the plan's ms")
        var gates = [Double](repeating: -1, count: 8)
        try gates.withUnsafeMutableBufferPointer { try s.sampleGates(epoch: 3, into: $0) }
        for i in 0..<8 where decisions[i] == 0 { XCTAssertEqual(gates[i], 0, "part \(i) is skipped in training too") }
        // z holds the budget over the architecture the plan runs: it does not climb without end.
        XCTAssertLessThan(solver.state.z, 1)
    }

    /// A model that pools its class token keeps one MHSA part however costly; one that averages
    /// its tokens may skip them all.
    func testAClassTokenKeepsOneAttentionPart() throws {
        for pool in [ViTSpec.Pool.token, .avg] {
            let spec = try ViTSpec(depth: 4, embedDim: 24, numHeads: 3, qkHeadDim: 8, vHeadDim: 8, mlpHidden: 32,
                                   patchSize: 4, imageHeight: 16, imageWidth: 16, numClasses: 10, pool: pool)
            let model = try flatTable(spec, attention: 1.0, mlp: 0.01)
            let s = try session(spec, model, budget: 0.1)
            let scores = try drive(s, steps: 300)
            var masks = GroupData(spec, fill: -1)
            let (plan, ms) = try scores.withScores { sc in
                try masks.withOutputs { try s.solver.plan(scores: sc, roundTo: 1, into: $0) }
            }
            let attention = plan.layers.filter(\.attention).count
            if pool == .token {
                XCTAssertEqual(attention, 1, "one MHSA part stays")
                XCTAssertGreaterThan(ms, s.solver.budgetMACs, "so the budget is missed, and the plan says so by its cost")
            } else {
                XCTAssertEqual(attention, 0)
                XCTAssertLessThanOrEqual(ms, s.solver.budgetMACs + 1e-12)
            }
        }
    }

    /// Where width pays (time proportional to width), the trim narrows layers and skips nothing.
    /// MHSA 0.3 ms a head plus 0.01 ms a value dim of each; MLP 0.04 ms a neuron, but 27 neurons
    /// timed 0.01 ms slower than 28.
    private func noisyTable(_ spec: ViTSpec) throws -> LatencyModel {
        let heads = Array(1...3), vDims = [1, 2, 4, 6, 8], neurons = [1, 8, 16, 24, 27, 28, 32]
        var attention: [Double] = []
        for h in heads { for v in vDims { attention.append(0.3 * Double(h) + 0.01 * Double(h * v)) } }
        let mlp = neurons.map { $0 == 27 ? 0.04 * 28 + 0.01 : 0.04 * Double($0) }
        return try LatencyModel(spec: spec, heads: heads, vDims: vDims, neurons: neurons, attention: attention,
                                mlp: mlp, fixed: 0.01)
    }

    /// The budget trim steps an MLP of 28 neurons down to 24, past 27 which saves nothing; it
    /// used to stop there, over the budget, when a step saved nothing.
    func testTheTrimStepsPastAWidthThatSavesNothing() throws {
        let spec = try smallSolverSpec(depth: 4)
        let model = try noisyTable(spec)
        var at28 = ArchPlan.dense(spec)
        for l in 0..<4 { at28.layers[l].neurons = 28 }
        let dense = try model.exactTotal(.dense(spec)), cost28 = try model.exactTotal(at28)
        // Value dims and block skips off: narrowing MLPs is the only way to save.
        var solver = try Solver(spec: spec, convention: .uvc,
                                config: SolverConfig(budget: (cost28 - 0.05) / dense, prune: [true, false, true],
                                                     skipBlocks: false, warmupEpochs: 0),
                                seed: 0, latency: model)
        for l in 0..<4 { (solver.state.removal[8 + l], solver.state.committed[8 + l]) = (4, 4) }
        solver.state.searchSteps = 1
        var rng = Xoshiro256StarStar(seed: 4)
        let scores = GroupData(spec, &rng)
        var masks = GroupData(spec, fill: -1)
        let (plan, ms) = try scores.withScores { sc in try masks.withOutputs { try solver.plan(scores: sc, roundTo: 1, into: $0) } }
        XCTAssertLessThanOrEqual(ms, solver.budgetMACs + 1e-12)
        XCTAssertEqual(plan.layers.map(\.neurons).sorted(), [24, 28, 28, 28], "one MLP from 28 to 24, none to 27")
    }

    /// A table proportional to width but for one inverted stretch below the MLP's count (27
    /// neurons timed 0.01 ms slower than 28, as noise leaves measured tables): the counts and the
    /// budget trim go past it. With the local derivative every MLP stopped at 28 neurons and the
    /// budget was met by cutting heads alone.
    func testANoisyStretchDoesNotHoldTheCounts() throws {
        let spec = try smallSolverSpec(depth: 4)
        let model = try noisyTable(spec)
        XCTAssertLessThan(model.mlpTime(neurons: 27.5).dNeurons, 0, "the table falls on [27, 28]")
        // Counts that move at most 0.32 neurons a step: they cannot jump the stretch.
        let s = SolverSession(try Solver(spec: spec, convention: .uvc,
                                         config: SolverConfig(budget: 0.7, gateGranularity: .part, warmupEpochs: 0.1,
                                                              countLR: [0.01, 0.01, 0.01]),
                                         seed: 3, latency: model))
        var rng = Xoshiro256StarStar(seed: 4)
        let scores = GroupData(spec, &rng)
        var factors = GroupData(spec, fill: -1)
        var gates = [Double](repeating: 0, count: 2 * spec.depth)
        for t in 0..<600 {
            let epoch = Double(t) / 100
            try gates.withUnsafeMutableBufferPointer { try s.sampleGates(epoch: epoch, into: $0) }
            let push = [Double](repeating: -1, count: 2 * spec.depth)
            try scores.withScores { sc in
                try factors.withOutputs { f in
                    try push.withUnsafeBufferPointer {
                        try s.step(scores: sc, gateGradient: $0, tokenScores: nil, learningRate: 1e-3, epoch: epoch, factors: f)
                    }
                }
            }
        }
        let committed = (0..<4).map { 32 - Int(s.solver.state.committed[2 * 4 + $0]) }
        XCTAssertTrue(committed.allSatisfy { $0 < 27 }, "the neuron counts went past the inverted stretch: \(committed)")
        var masks = GroupData(spec, fill: -1)
        let (plan, ms) = try scores.withScores { sc in try masks.withOutputs { try s.solver.plan(scores: sc, roundTo: 1, into: $0) } }
        XCTAssertLessThanOrEqual(ms, s.solver.budgetMACs + 1e-12)
        XCTAssertTrue(plan.layers.allSatisfy { $0.attention && $0.mlp && $0.neurons < 27 }, "\(plan.layers)")
    }

    func testAWidthProportionalTableIsMetByNarrowing() throws {
        let spec = try smallSolverSpec(depth: 4)
        let heads = Array(1...3), vDims = [1, 2, 4, 6, 8], neurons = [1, 8, 16, 24, 32]
        var attention: [Double] = []
        for h in heads { for v in vDims { attention.append(0.05 * Double(h * v)) } }
        let model = try LatencyModel(spec: spec, heads: heads, vDims: vDims, neurons: neurons, attention: attention,
                                     mlp: neurons.map { 0.04 * Double($0) }, fixed: 0.01)
        let s = try session(spec, model, budget: 0.6)
        let scores = try drive(s, steps: 300)
        var masks = GroupData(spec, fill: -1)
        let (plan, ms) = try scores.withScores { sc in try masks.withOutputs { try s.solver.plan(scores: sc, roundTo: 1, into: $0) } }
        XCTAssertLessThanOrEqual(ms, s.solver.budgetMACs + 1e-12)
        XCTAssertTrue(plan.layers.allSatisfy { $0.attention && $0.mlp }, "no part skipped")
    }
}

private extension Int {
    /// The grid point nearest to self (the larger on a tie), as plan extraction snaps.
    func roundedToGrid(_ grid: [Int]) -> Int { grid.min { (abs($0 - self), -$0) < (abs($1 - self), -$1) }! }
}
