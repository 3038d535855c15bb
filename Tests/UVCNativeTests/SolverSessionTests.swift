import XCTest
@testable import UVCNative

/// The session the C ABI hands out: saving and restoring, and refused calls changing nothing.
final class SolverSessionTests: XCTestCase {
    private func session(seed: UInt64 = 1) throws -> SolverSession {
        let spec = try ViTSpec(depth: 2, embedDim: 8, numHeads: 2, qkHeadDim: 4, vHeadDim: 4, mlpHidden: 16,
                               patchSize: 4, imageHeight: 8, imageWidth: 8)
        let config = try SolverConfig(budget: 0.5, warmupEpochs: 0, countLR: [0.2, 0.2, 0.2], gatingInterval: 2)
        return SolverSession(try Solver(spec: spec, convention: .uvc, config: config, seed: seed))
    }

    private func drive(_ s: SolverSession, steps: Int, scale: Double = 1, sample: Bool = true) throws {
        let n = s.solver.spec.groupArraySizes
        let heads = (0..<n.heads).map { scale * (1 + Double($0)) }, dims = (0..<n.dims).map { scale * (1 + Double($0 % 7)) }
        let neurons = (0..<n.neurons).map { scale * (1 + Double($0 % 5)) }
        var (fHeads, fDims, fNeurons) = (heads, dims, neurons)
        var gates = [Double](repeating: 0, count: 2 * s.solver.spec.depth)
        for _ in 0..<steps {
            if sample { try gates.withUnsafeMutableBufferPointer { try s.sampleGates(epoch: 1, into: $0) } }
            try heads.withUnsafeBufferPointer { h in
                try dims.withUnsafeBufferPointer { d in
                    try neurons.withUnsafeBufferPointer { k in
                        try fHeads.withUnsafeMutableBufferPointer { fh in
                            try fDims.withUnsafeMutableBufferPointer { fd in
                                try fNeurons.withUnsafeMutableBufferPointer { fk in
                                    try s.step(scores: GroupScores(heads: h, dims: d, neurons: k), gateGradient: nil,
                                               tokenScores: nil, learningRate: 1e-3, epoch: 1,
                                               factors: GroupOutputs(heads: fh, dims: fd, neurons: fk))
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    func testSavedBytesResumeExactly() throws {
        let a = try session(), b = try session(seed: 99)
        try drive(a, steps: 7)
        try a.save().withUnsafeBytes { try b.load($0) }
        XCTAssertEqual(b.save(), a.save())
        try drive(a, steps: 5)
        try drive(b, steps: 5)
        XCTAssertEqual(b.save(), a.save(), "a restored session continues bit for bit")
        XCTAssertEqual(a.solver.state, b.solver.state)
    }

    func testARefusedLoadOrStepChangesNothing() throws {
        let a = try session()
        try drive(a, steps: 4)
        let before = a.save()
        var bytes = before
        bytes[12] = 7  // format version
        XCTAssertThrowsError(try bytes.withUnsafeBytes { try a.load($0) })
        XCTAssertThrowsError(try Array(before.dropLast(8)).withUnsafeBytes { try a.load($0) })
        XCTAssertThrowsError(try drive(a, steps: 1, scale: -1, sample: false)) { XCTAssertEqual(($0 as? UVCError)?.argument, "head_scores") }
        XCTAssertEqual(a.save(), before)
    }

    func testTheSummaryFollowsItsLayout() throws {
        let a = try session()
        try drive(a, steps: 3)
        let count = a.summaryLayout.reduce(0) { $0 + $1.shape.reduce(1, *) }
        var out = [Double](repeating: .nan, count: count)
        try out.withUnsafeMutableBufferPointer { try a.summary(into: $0) }
        XCTAssertFalse(out.contains { $0.isNaN })
        XCTAssertEqual(out[count - 1], a.solver.state.searchSteps)
        XCTAssertEqual(out[count - 2], a.solver.state.z)
        XCTAssertEqual(out[count - 4], a.solver.denseMACs)
    }
}
