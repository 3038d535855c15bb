import XCTest
@testable import UVCNative

/// Group gates: pooling, one decision per group, eval mode, and the backward pass.
final class USDCGroupGatesTests: XCTestCase {
    /// Forward on owned arrays: (gates, probs).
    private func forward(_ logits: [Double], _ groups: [Int64], _ noise: [Double], columns: Int, tau: Double,
                         straightThrough: Bool) throws -> ([Double], [Double]) {
        var gates = [Double](repeating: -1, count: logits.count), probs = gates
        try groups.withUnsafeBufferPointer { g in
            let gg = try GroupGates(groups: g, groupCount: noise.count / columns, columns: columns)
            logits.withUnsafeBufferPointer { l in
                noise.withUnsafeBufferPointer { n in
                    gates.withUnsafeMutableBufferPointer { out in
                        probs.withUnsafeMutableBufferPointer {
                            gg.forward(logits: l, noise: n, tau: tau, straightThrough: straightThrough, gates: out, probs: $0)
                        }
                    }
                }
            }
        }
        return (gates, probs)
    }

    private func backward(_ logits: [Double], _ groups: [Int64], _ noise: [Double], columns: Int, tau: Double,
                          gateGrad: [Double], probGrad: [Double]) throws -> [Double] {
        var grad = [Double](repeating: -1, count: logits.count)
        try groups.withUnsafeBufferPointer { g in
            let gg = try GroupGates(groups: g, groupCount: noise.count / columns, columns: columns)
            logits.withUnsafeBufferPointer { l in
                noise.withUnsafeBufferPointer { n in
                    gateGrad.withUnsafeBufferPointer { u in
                        probGrad.withUnsafeBufferPointer { v in
                            grad.withUnsafeMutableBufferPointer {
                                gg.backward(logits: l, noise: n, tau: tau, gateGradient: u, probGradient: v, into: $0)
                            }
                        }
                    }
                }
            }
        }
        return grad
    }

    private func sigmoid(_ x: Double) -> Double { 1 / (1 + expReference(-x)) }

    func testEachGroupPoolsItsMembersAndTakesOneDecision() throws {
        // Batch 5, two columns, groups {0, 3, 4}, {1}, {2}.
        let logits = [0.5, -1.0, 2.0, 0.3, -0.4, 0.2, -0.8, 0.9, 0.6, -0.2]
        let groups: [Int64] = [0, 1, 2, 0, 0]
        let noise = [0.1, -0.3, -2.5, 0.0, 0.7, -0.5]
        let tau = 0.7
        let pooled = [[(0.5 - 0.8 + 0.6) / 3, (-1.0 + 0.9 - 0.2) / 3], [2.0, 0.3], [-0.4, 0.2]]
        let (soft, probs) = try forward(logits, groups, noise, columns: 2, tau: tau, straightThrough: false)
        let (hard, _) = try forward(logits, groups, noise, columns: 2, tau: tau, straightThrough: true)
        for b in 0..<5 {
            let k = Int(groups[b])
            for c in 0..<2 {
                let s = sigmoid((pooled[k][c] + noise[2 * k + c]) / tau)
                XCTAssertEqual(soft[2 * b + c], s, accuracy: 1e-13)
                XCTAssertEqual(hard[2 * b + c], s > 0.5 ? 1 : 0)
                XCTAssertEqual(probs[2 * b + c], sigmoid(pooled[k][c]), accuracy: 1e-13)
            }
        }
        // Group 1 (sample 1): pooled 2.0 − 2.5 noise < 0 skips the MHSA column.
        XCTAssertEqual(hard[2], 0)
    }

    func testEvalModeRunsAPartIffThePooledLogOddsArePositive() throws {
        let logits = [1.0, -3.0, 0.5, 2.0, -2.0, 0.5]
        // One group: the whole batch decides together (inference).
        let (gates, _) = try forward(logits, [0, 0, 0], [0, 0], columns: 2, tau: 0.5, straightThrough: true)
        XCTAssertEqual(gates, [0, 0, 0, 0, 0, 0], "column means −1/6 and −1/6")
        // One group per sample: every sample decides alone.
        let (alone, _) = try forward(logits, [0, 1, 2], [0, 0, 0, 0, 0, 0], columns: 2, tau: 0.5, straightThrough: true)
        XCTAssertEqual(alone, [1, 0, 1, 1, 0, 1])
    }

    func testBackwardMatchesFiniteDifferencesOfTheSoftGatesAndProbabilities() throws {
        var rng = TestRNG(state: 17)
        let batch = 11, columns = 3, groupCount = GroupPartition.groupCount(batch: batch)
        let logits = (0..<(batch * columns)).map { _ in 4 * rng.unit() - 2 }
        let noise = (0..<(groupCount * columns)).map { _ in 2 * rng.unit() - 1 }
        let gateGrad = (0..<(batch * columns)).map { _ in rng.unit() - 0.5 }
        let probGrad = (0..<(batch * columns)).map { _ in rng.unit() - 0.5 }
        var groups = [Int64](repeating: 0, count: batch), sizes = [Int64](repeating: 0, count: groupCount)
        var prng = Xoshiro256StarStar(seed: 1)
        groups.withUnsafeMutableBufferPointer { g in
            sizes.withUnsafeMutableBufferPointer { GroupPartition.sample(groups: g, sizes: $0, rng: &prng) }
        }
        let tau = 0.6
        let loss = { (x: [Double]) throws -> Double in
            let (s, p) = try self.forward(x, groups, noise, columns: columns, tau: tau, straightThrough: false)
            return zip(s, gateGrad).map(*).reduce(0, +) + zip(p, probGrad).map(*).reduce(0, +)
        }
        let grad = try backward(logits, groups, noise, columns: columns, tau: tau, gateGrad: gateGrad, probGrad: probGrad)
        for i in logits.indices {
            var up = logits, down = logits
            up[i] += 1e-6
            down[i] -= 1e-6
            XCTAssertEqual(grad[i], (try loss(up) - loss(down)) / 2e-6, accuracy: 1e-8, "logit \(i)")
        }
        // Members of a group share its gradient equally.
        for b in 0..<batch {
            for b2 in 0..<batch where groups[b] == groups[b2] {
                for c in 0..<columns { XCTAssertEqual(grad[b * columns + c], grad[b2 * columns + c]) }
            }
        }
    }

    func testBadArgumentsThrowNamingThem() throws {
        let groups: [Int64] = [0, 2]
        try groups.withUnsafeBufferPointer { g in
            XCTAssertThrowsError(try GroupGates(groups: g, groupCount: 2, columns: 1)) {
                XCTAssertEqual(($0 as? UVCError)?.argument, "groups")
            }
        }
        let ok: [Int64] = [0, 0]
        try ok.withUnsafeBufferPointer { g in
            let gates = try GroupGates(groups: g, groupCount: 1, columns: 1)
            try [0.1, 0.2].withUnsafeBufferPointer { l in
                try [0.0].withUnsafeBufferPointer { n in
                    XCTAssertThrowsError(try gates.validate(logits: l, noise: n, tau: 0)) {
                        XCTAssertEqual(($0 as? UVCError)?.argument, "tau")
                    }
                }
                try [Double.nan].withUnsafeBufferPointer { n in
                    XCTAssertThrowsError(try gates.validate(logits: l, noise: n, tau: 1)) {
                        XCTAssertEqual(($0 as? UVCError)?.argument, "noise")
                    }
                }
            }
        }
    }

    func testMoreGroupsThanSamplesIsRefusedBeforeAnyAllocation() throws {
        // One noise row per group, at most one group per sample: a huge row count of empty
        // noise must be an error, not an allocation of that many counters.
        let groups: [Int64] = [0, 0, 1]
        try groups.withUnsafeBufferPointer { g in
            XCTAssertThrowsError(try GroupGates(groups: g, groupCount: 1 << 40, columns: 0))
            XCTAssertThrowsError(try GroupGates(groups: g, groupCount: 4, columns: 2))
            XCTAssertNoThrow(try GroupGates(groups: g, groupCount: 3, columns: 2))
        }
    }
}
