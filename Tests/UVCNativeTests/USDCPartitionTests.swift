import XCTest
@testable import UVCNative

/// USDC's group partition: the halving rule, the shuffle, the noise, and the bounded draw under it.
final class USDCPartitionTests: XCTestCase {
    private func sizes(_ batch: Int) -> [Int64] {
        var out = [Int64](repeating: -1, count: GroupPartition.groupCount(batch: batch))
        out.withUnsafeMutableBufferPointer { GroupPartition.sizes(batch: batch, into: $0) }
        return out
    }

    private func sample(_ batch: Int, _ rng: inout Xoshiro256StarStar) -> (groups: [Int64], sizes: [Int64]) {
        var groups = [Int64](repeating: -1, count: batch)
        var sizes = [Int64](repeating: -1, count: GroupPartition.groupCount(batch: batch))
        groups.withUnsafeMutableBufferPointer { g in
            sizes.withUnsafeMutableBufferPointer { GroupPartition.sample(groups: g, sizes: $0, rng: &rng) }
        }
        return (groups, sizes)
    }

    func testSizesOfKnownBatches() {
        XCTAssertEqual(sizes(1), [1])
        XCTAssertEqual(sizes(2), [1, 1])
        XCTAssertEqual(sizes(3), [2, 1])
        XCTAssertEqual(sizes(6), [3, 2, 1])
        XCTAssertEqual(sizes(7), [4, 2, 1])
        XCTAssertEqual(sizes(8), [4, 2, 1, 1])
        XCTAssertEqual(sizes(256), [128, 64, 32, 16, 8, 4, 2, 1, 1])
        XCTAssertEqual(sizes(100), [50, 25, 13, 6, 3, 2, 1])
    }

    func testSizesSumToTheBatchAndFollowTheHalvingRule() {
        for batch in 1...600 {
            let s = sizes(batch)
            XCTAssertEqual(s.count, Int.bitWidth - batch.leadingZeroBitCount, "batch \(batch)")
            XCTAssertEqual(s.reduce(0, +), Int64(batch), "batch \(batch)")
            var left = Int64(batch)
            for (k, size) in s.enumerated() {
                XCTAssertEqual(size, k == s.count - 1 ? 1 : (left + 1) / 2, "batch \(batch) group \(k)")
                left -= size
            }
            XCTAssertEqual(left, 0)
        }
    }

    func testSampleAssignsEveryGroupItsSizeAndIsSeeded() {
        var a = Xoshiro256StarStar(seed: 4), b = Xoshiro256StarStar(seed: 4), c = Xoshiro256StarStar(seed: 5)
        let (ga, sa) = sample(64, &a)
        XCTAssertEqual(sa, sizes(64))
        for (k, size) in sa.enumerated() { XCTAssertEqual(Int64(ga.filter { $0 == Int64(k) }.count), size) }
        XCTAssertEqual(sample(64, &b).groups, ga)
        XCTAssertNotEqual(sample(64, &c).groups, ga)
        XCTAssertEqual(a, b, "the generator advanced by the same draws")
        // The groups are shuffled, not laid out in order.
        XCTAssertNotEqual(ga, ga.sorted())
    }

    func testShuffleIsUniformOverPositions() {
        // Batch 4 has groups 2, 1, 1: each sample is in group 0 with probability 1/2, in each
        // other group with probability 1/4.
        var rng = Xoshiro256StarStar(seed: 8)
        let n = 40_000
        var counts = [[Int]](repeating: [0, 0, 0], count: 4)
        for _ in 0..<n {
            for (b, g) in sample(4, &rng).groups.enumerated() { counts[b][Int(g)] += 1 }
        }
        for b in 0..<4 {
            for (g, p) in [0.5, 0.25, 0.25].enumerated() {
                XCTAssertEqual(Double(counts[b][g]) / Double(n), p, accuracy: 4 * (p * (1 - p) / Double(n)).squareRoot())
            }
        }
    }

    func testNextBelowStaysInRangeAndIsUniform() {
        var rng = Xoshiro256StarStar(seed: 2)
        let n = 30_000
        var counts = [0, 0, 0, 0, 0]
        for _ in 0..<n { counts[Int(rng.nextBelow(5))] += 1 }
        for c in counts { XCTAssertEqual(Double(c) / Double(n), 0.2, accuracy: 4 * (0.16 / Double(n)).squareRoot()) }
        for _ in 0..<100 { XCTAssertEqual(rng.nextBelow(1), 0) }
        // A bound near 2⁶⁴ exercises the rejection branch.
        let big = UInt64.max - 3
        for _ in 0..<100 { XCTAssertLessThan(rng.nextBelow(big), big) }
    }

    func testBaselineGroupingsNeedNoDraws() {
        var rng = Xoshiro256StarStar(seed: 1)
        let before = rng
        var groups = [Int64](repeating: -1, count: 5), one = [Int64](repeating: -1, count: 1)
        var five = [Int64](repeating: -1, count: 5)
        groups.withUnsafeMutableBufferPointer { g in
            five.withUnsafeMutableBufferPointer { GroupPartition.sample(.sample, groups: g, sizes: $0, rng: &rng) }
        }
        XCTAssertEqual(groups, [0, 1, 2, 3, 4])
        XCTAssertEqual(five, [1, 1, 1, 1, 1])
        groups.withUnsafeMutableBufferPointer { g in
            one.withUnsafeMutableBufferPointer { GroupPartition.sample(.batch, groups: g, sizes: $0, rng: &rng) }
        }
        XCTAssertEqual(groups, [0, 0, 0, 0, 0])
        XCTAssertEqual(one, [5])
        XCTAssertEqual(rng, before)
    }

    func testMixedPutsHalfTheBatchInHalvingGroupsAndTheRestAlone() {
        var rng = Xoshiro256StarStar(seed: 12)
        for batch in [1, 2, 3, 8, 9, 128, 255] {
            let halved = batch - batch / 2, count = GroupPartition.Grouping.mixed.groupCount(batch: batch)
            XCTAssertEqual(count, GroupPartition.groupCount(batch: halved) + batch / 2)
            var groups = [Int64](repeating: -1, count: batch), sizes = [Int64](repeating: -1, count: count)
            groups.withUnsafeMutableBufferPointer { g in
                sizes.withUnsafeMutableBufferPointer { GroupPartition.sample(.mixed, groups: g, sizes: $0, rng: &rng) }
            }
            XCTAssertEqual(Array(sizes.prefix(GroupPartition.groupCount(batch: halved))), self.sizes(halved), "batch \(batch)")
            XCTAssertEqual(Array(sizes.dropFirst(GroupPartition.groupCount(batch: halved))),
                           [Int64](repeating: 1, count: batch / 2), "batch \(batch)")
            for (k, size) in sizes.enumerated() {
                XCTAssertEqual(Int64(groups.filter { $0 == Int64(k) }.count), size, "batch \(batch) group \(k)")
            }
            if batch >= 8 { XCTAssertNotEqual(groups, groups.sorted(), "shuffled") }
        }
    }

    func testLogisticNoiseHasMeanZeroAndVariancePiSquaredOverThree() {
        var rng = Xoshiro256StarStar(seed: 6)
        var noise = [Double](repeating: 0, count: 100_000)
        noise.withUnsafeMutableBufferPointer { GroupPartition.logisticNoise(into: $0, rng: &rng) }
        let mean = noise.reduce(0, +) / Double(noise.count)
        let variance = noise.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(noise.count)
        XCTAssertEqual(mean, 0, accuracy: 0.025)
        XCTAssertEqual(variance, Double.pi * Double.pi / 3, accuracy: 0.06)
    }

    func testTheSamplerDrawsAsTheGeneratorAndRoundTripsItsBytes() throws {
        var sampler = GroupSampler(seed: 3)
        var expected = Xoshiro256StarStar(seed: 3)
        var groups = [Int64](repeating: 0, count: 8), sizes = [Int64](repeating: 0, count: 4)
        var noise = [Double](repeating: 0, count: 8)
        let saved = sampler.save()
        try groups.withUnsafeMutableBufferPointer { g in
            try sizes.withUnsafeMutableBufferPointer { s in
                try noise.withUnsafeMutableBufferPointer { try sampler.sample(.halving, groups: g, sizes: s, noise: $0) }
            }
        }
        let reference = sample(8, &expected)
        XCTAssertEqual(groups, reference.groups)
        var refNoise = [Double](repeating: 0, count: 8)
        refNoise.withUnsafeMutableBufferPointer { GroupPartition.logisticNoise(into: $0, rng: &expected) }
        XCTAssertEqual(noise, refNoise)
        XCTAssertTrue(sampler.rng == expected)

        // Three groups for a batch of 8 is refused and draws nothing.
        var three = [Int64](repeating: 0, count: 3)
        XCTAssertThrowsError(try groups.withUnsafeMutableBufferPointer { g in
            try three.withUnsafeMutableBufferPointer { s in
                try noise.withUnsafeMutableBufferPointer { try sampler.sample(.halving, groups: g, sizes: s, noise: $0) }
            }
        }) { XCTAssertEqual(($0 as? UVCError)?.argument, "sizes_out") }
        XCTAssertTrue(sampler.rng == expected)

        try saved.withUnsafeBytes { try sampler.load($0) }
        XCTAssertTrue(sampler.rng == Xoshiro256StarStar(seed: 3))
        var zero = Archive.Writer(.sampler, version: GroupSampler.archiveVersion)
        for _ in 0..<4 { zero.put(UInt64(0)) }
        XCTAssertThrowsError(try zero.bytes.withUnsafeBytes { try sampler.load($0) }) {
            XCTAssertTrue(($0 as? UVCError)?.message.contains("all-zero") == true)
        }
        XCTAssertTrue(sampler.rng == Xoshiro256StarStar(seed: 3), "a refused load changes nothing")
    }
}
