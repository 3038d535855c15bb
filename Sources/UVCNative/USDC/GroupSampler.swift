/// The seeded source of USDC's training-time partitions and gate noise: one generator whose
/// state is saved and restored bit for bit.
public struct GroupSampler: Sendable {
    public private(set) var rng: Xoshiro256StarStar

    /// Format version of `save()`'s payload (`Archive.Tag.sampler`).
    public static let archiveVersion: UInt32 = 1

    public init(seed: UInt64) { rng = Xoshiro256StarStar(seed: seed) }

    /// The partition of a batch of B = `groups.count` ≥ 1 samples under `grouping` and its gate
    /// noise: `sizes` takes `grouping.groupCount(batch: B)` values, `noise` that many rows of
    /// C ≥ 0 columns. Advances the generator only when the call succeeds.
    public mutating func sample(_ grouping: GroupPartition.Grouping, groups: UnsafeMutableBufferPointer<Int64>,
                                sizes: UnsafeMutableBufferPointer<Int64>,
                                noise: UnsafeMutableBufferPointer<Double>) throws(UVCError) {
        try require(groups.count >= 1, "groups_out", "expected at least one sample, got 0")
        let count = grouping.groupCount(batch: groups.count)
        try require(sizes.count == count, "sizes_out",
                    "expected \(count) values (the \(grouping.name) groups of \(groups.count)), got \(sizes.count)")
        try require(noise.count % count == 0, "noise_out", "expected \(count) rows, got \(noise.count) values")
        GroupPartition.sample(grouping, groups: groups, sizes: sizes, rng: &rng)
        GroupPartition.logisticNoise(into: noise, rng: &rng)
    }

    public func save() -> [UInt8] {
        var w = Archive.Writer(.sampler, version: GroupSampler.archiveVersion)
        let words = rng.words
        for word in [words.0, words.1, words.2, words.3] { w.put(word) }
        return w.bytes
    }

    /// Restores what `save` wrote; on error nothing changes.
    public mutating func load(_ bytes: UnsafeRawBufferPointer) throws(UVCError) {
        var r = try Archive.Reader(bytes, .sampler, version: GroupSampler.archiveVersion, argument: "state")
        let words = (try r.word(), try r.word(), try r.word(), try r.word())
        try r.finish()
        do throws(UVCError) {
            rng = try Xoshiro256StarStar(words: words)
        } catch {
            throw UVCError("state", error.message)
        }
    }
}
