import XCTest
@testable import UVCNative

/// USDC's resource loss: its value against the exact cost model (MACs, or a latency table's ms) and its
/// gradient against finite differences.
final class USDCResourceLossTests: XCTestCase {
    /// Owned inputs, in `ResourceLoss.Arrays` order.
    struct Inputs {
        var arrays: [[Double]]

        init(_ loss: ResourceLoss, fill: (Int, Int) -> Double) {
            let depth = loss.model.spec.depth
            arrays = loss.widths.enumerated().map { k, w in (0..<(depth * w.width)).map { fill(k, $0) } }
        }
    }

    private func evaluate(_ loss: ResourceLoss, _ x: Inputs, target: Double = 0.5,
                          gamma: Double = 100, dual: Double = 0) throws -> (ResourceLoss.Value, [[Double]]) {
        // Buffers owned for the call: the core takes six inputs and six outputs at once.
        let ins = x.arrays.map { a in
            let b = UnsafeMutableBufferPointer<Double>.allocate(capacity: a.count)
            _ = b.initialize(from: a)
            return b
        }
        let outs = x.arrays.map { a in
            let b = UnsafeMutableBufferPointer<Double>.allocate(capacity: a.count)
            b.initialize(repeating: .nan)
            return b
        }
        defer { (ins + outs).forEach { $0.deallocate() } }
        let c = ins.map { UnsafeBufferPointer($0) }
        let xin = ResourceLoss.Arrays(headProbs: c[0], neuronProbs: c[1], partProbs: c[2], rates: c[3],
                                      gateCosts: c[4], gateProbs: c[5])
        let gout = ResourceLoss.Arrays(headProbs: outs[0], neuronProbs: outs[1], partProbs: outs[2], rates: outs[3],
                                       gateCosts: outs[4], gateProbs: outs[5])
        try loss.validate(xin, target: target, gamma: gamma, dual: dual)
        let value = loss.evaluate(xin, target: target, gamma: gamma, dual: dual, gradient: gout)
        return (value, outs.map { Array($0) })
    }

    private func model(_ convention: CostConvention = .fvcore) throws -> CostModel {
        CostModel(spec: try smallSolverSpec(depth: 3), convention: convention)
    }

    func testDenseInputsCostTheDenseModelPlusTheGateNetworks() throws {
        let loss = try ResourceLoss(model: try model(), neuronGroups: 4, gateOptions: 2)
        let gateMACs = [100.0, 300.0]
        // Keep probabilities and rates 1; option weights (0.25, 0.75).
        let x = Inputs(loss) { k, i in k == 4 ? gateMACs[i % 2] : k == 5 ? [0.25, 0.75][i % 2] : 1 }
        let (v, _) = try evaluate(loss, x, target: 0.5, gamma: 100)
        let gates = 3 * (0.25 * 100 + 0.75 * 300)
        XCTAssertEqual(v.cost, loss.denseCost + gates, accuracy: 1e-6)
        XCTAssertEqual(v.ratio, 1 + gates / loss.denseCost, accuracy: 1e-12)
        XCTAssertEqual(v.loss, 100 * (v.ratio - 0.5) * (v.ratio - 0.5), accuracy: 1e-9)
    }

    /// The 0/1 inputs of one plan on the 3-layer spec, each gate network costing `gateCost`.
    /// Layer 0: heads {0, 2}, neuron groups {1, 5}, both parts run. Layer 1: MLP statically
    /// pruned, MHSA skipped by its gate: only the gate network runs. Layer 2: both parts pruned:
    /// nothing runs, the gate network goes too.
    private func zeroOneInputs(_ loss: ResourceLoss, gateCost: Double) -> (Inputs, ArchPlan) {
        let spec = loss.model.spec
        let heads: [[Double]] = [[1, 0, 1], [1, 1, 1], [0, 1, 0]]
        let groups: [Set<Int>] = [[1, 5], [0], [2]]
        let parts: [[Double]] = [[1, 1], [1, 0], [0, 0]], rates: [[Double]] = [[1, 1], [0, 1], [1, 1]]
        let x = Inputs(loss) { k, i in
            let (l, j) = k == 0 ? (i / 3, i % 3) : k == 1 ? (i / 8, i % 8) : k < 4 ? (i / 2, i % 2) : (i, 0)
            switch k {
            case 0: return heads[l][j]
            case 1: return groups[l].contains(j) ? 1 : 0
            case 2: return parts[l][j]
            case 3: return rates[l][j]
            case 4: return gateCost
            default: return 1
            }
        }
        let plan = ArchPlan(layers: [
            LayerPlan(heads: 2, qkDim: spec.qkHeadDim, vDim: spec.vHeadDim, neurons: 8, tokens: spec.numTokens),
            LayerPlan(heads: 3, qkDim: spec.qkHeadDim, vDim: spec.vHeadDim, neurons: 4, attention: false, mlp: false, tokens: spec.numTokens),
            LayerPlan(heads: 1, qkDim: spec.qkHeadDim, vDim: spec.vHeadDim, neurons: 4, attention: false, mlp: false, tokens: spec.numTokens),
        ])
        return (x, plan)
    }

    /// Central differences of the loss (penalty gamma 100 plus `dual` times the gap) in every
    /// input, against `grads`; `step(k)` is the step for array k.
    private func assertFiniteDifferences(_ loss: ResourceLoss, _ x: Inputs, _ grads: [[Double]], target: Double,
                                         dual: Double, tolerance: Double, step: (Int) -> Double,
                                         file: StaticString = #filePath, line: UInt = #line) throws {
        var x = x
        for k in x.arrays.indices {
            for i in x.arrays[k].indices {
                let h = step(k), v = x.arrays[k][i]
                x.arrays[k][i] = v + h
                let up = try evaluate(loss, x, target: target, dual: dual).0.loss
                x.arrays[k][i] = v - h
                let down = try evaluate(loss, x, target: target, dual: dual).0.loss
                x.arrays[k][i] = v
                let fd = (up - down) / (2 * h)
                XCTAssertEqual(grads[k][i], fd, accuracy: tolerance * max(1, abs(fd)), "\(loss.widths[k].name)[\(i)]",
                               file: file, line: line)
            }
        }
    }

    func testZeroOneInputsGiveTheExactCostOfThePlan() throws {
        let base = try model()
        let loss = try ResourceLoss(model: base, neuronGroups: 8, gateOptions: 1)
        let (x, plan) = zeroOneInputs(loss, gateCost: 70)
        let (v, _) = try evaluate(loss, x)
        XCTAssertEqual(v.cost, base.exactTotal(plan) + 2 * 70, accuracy: 1e-6)
    }

    func testGradientMatchesFiniteDifferencesForEveryInput() throws {
        for convention in [CostConvention.uvc, .fvcore, CostConvention(layerNormPerElement: 5, softmax: true, gelu: true,
                                                                        bias: true, head: true)] {
            let loss = try ResourceLoss(model: try model(convention), neuronGroups: 4, gateOptions: 3)
            var rng = TestRNG(state: 99)
            let x = Inputs(loss) { k, _ in k == 4 ? 500 + 4000 * rng.unit() : 0.1 + 0.8 * rng.unit() }
            // Both terms at once: the penalty and a dual's linear term.
            let (value, grads) = try evaluate(loss, x, target: 0.4, gamma: 100, dual: 3)
            let gap = value.ratio - 0.4
            XCTAssertEqual(value.loss, 100 * gap * gap + 3 * gap, accuracy: 1e-12)
            try assertFiniteDifferences(loss, x, grads, target: 0.4, dual: 3, tolerance: 1e-6) { $0 == 4 ? 1e-2 : 1e-6 }
        }
    }

    func testBadArgumentsThrowNamingThem() throws {
        XCTAssertThrowsError(try ResourceLoss(model: try model(), neuronGroups: 5, gateOptions: 1)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "neuron_probs")
        }
        let loss = try ResourceLoss(model: try model(), neuronGroups: 4, gateOptions: 1)
        var x = Inputs(loss) { _, _ in 1 }
        XCTAssertThrowsError(try evaluate(loss, x, target: 0)) { XCTAssertEqual(($0 as? UVCError)?.argument, "target") }
        XCTAssertThrowsError(try evaluate(loss, x, gamma: -1)) { XCTAssertEqual(($0 as? UVCError)?.argument, "gamma") }
        XCTAssertThrowsError(try evaluate(loss, x, dual: .infinity)) { XCTAssertEqual(($0 as? UVCError)?.argument, "dual") }
        x.arrays[3][1] = 1.5
        XCTAssertThrowsError(try evaluate(loss, x)) { XCTAssertEqual(($0 as? UVCError)?.argument, "rates") }
        x.arrays[3][1] = 1
        x.arrays[4][0] = -1
        XCTAssertThrowsError(try evaluate(loss, x)) { XCTAssertEqual(($0 as? UVCError)?.argument, "gate_macs") }
        let timed = try ResourceLoss(model: try model(), latency: try latency(), neuronGroups: 4, gateOptions: 1)
        XCTAssertThrowsError(try evaluate(timed, x)) { XCTAssertEqual(($0 as? UVCError)?.argument, "gate_ms") }
        XCTAssertThrowsError(try ResourceLoss(model: CostModel(spec: try smallSolverSpec(depth: 2), convention: .uvc),
                                              latency: try latency(), neuronGroups: 4, gateOptions: 1)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "latency")
        }
    }

    // MARK: - a latency table

    /// A table for `smallSolverSpec(depth: 3)` (3 heads of 8 value dims, 32 neurons) with uneven
    /// steps, so interpolation and its slopes differ from stretch to stretch.
    private func latency() throws -> LatencyModel {
        let spec = try smallSolverSpec(depth: 3)
        let heads = [1, 2, 3], vDims = [1, 4, 8], neurons = [1, 8, 17, 32]
        let attention = heads.flatMap { h in vDims.map { v in 0.2 + 0.07 * Double(h) + 0.01 * Double(h * v) } }
        let mlp = neurons.map { 0.1 + 0.01 * Double($0) + ($0 >= 17 ? 0.05 : 0) }
        return try LatencyModel(spec: spec, heads: heads, vDims: vDims, neurons: neurons, attention: attention,
                                mlp: mlp, fixed: 0.4)
    }

    func testALatencyTablePricesZeroOneInputsAtItsMsOfThePlan() throws {
        let table = try latency(), spec = table.spec
        let loss = try ResourceLoss(model: try model(), latency: table, neuronGroups: 8, gateOptions: 1)
        XCTAssertEqual(loss.unit, "ms")
        XCTAssertEqual(loss.widths[4].name, "gate_ms")
        XCTAssertEqual(loss.denseCost, try table.exactTotal(.dense(spec)), accuracy: 1e-12)
        let (x, plan) = zeroOneInputs(loss, gateCost: 0.05)
        let (v, _) = try evaluate(loss, x, target: 0.5, gamma: 10)
        XCTAssertEqual(v.cost, try table.exactTotal(plan) + 2 * 0.05, accuracy: 1e-12)
        XCTAssertEqual(v.ratio, v.cost / loss.denseCost, accuracy: 1e-12)
        XCTAssertEqual(v.loss, 10 * (v.ratio - 0.5) * (v.ratio - 0.5), accuracy: 1e-12)
    }

    func testALatencyTablesGradientMatchesFiniteDifferences() throws {
        let loss = try ResourceLoss(model: try model(), latency: try latency(), neuronGroups: 4, gateOptions: 2)
        var rng = TestRNG(state: 7)
        // Head probabilities of layer 2 sum below 1 head, where the table is flat (clamped to
        // its first point): their gradient is 0 there.
        let x = Inputs(loss) { k, i in
            k == 4 ? 0.01 + 0.1 * rng.unit() : k == 0 && i >= 6 ? 0.05 + 0.2 * rng.unit() : 0.35 + 0.6 * rng.unit()
        }
        let (value, grads) = try evaluate(loss, x, target: 0.3, gamma: 100, dual: 2)
        let gap = value.ratio - 0.3
        XCTAssertEqual(value.loss, 100 * gap * gap + 2 * gap, accuracy: 1e-12)
        for i in 6..<9 { XCTAssertEqual(grads[0][i], 0, "a head below the table's first point costs nothing") }
        try assertFiniteDifferences(loss, x, grads, target: 0.3, dual: 2, tolerance: 1e-5) { _ in 1e-7 }
    }
}
