/// USDC's group-level gate augmentation (seed 002, Fig. 2 and appendix D): each training batch
/// is cut into sub-groups of halving sizes, and each sub-group takes one gate decision, so that
/// training sees every batch size the model may meet at inference.
///
/// Halving rule: with n_0 = B samples, group k takes ⌈n_k / 2⌉ of the n_k samples not yet
/// grouped (n_{k+1} = ⌊n_k / 2⌋), until one sample is left, which is the last group. For a power
/// of two this is B/2, B/4, …, 2, 1, 1 (B = 8: 4, 2, 1, 1); otherwise, e.g. B = 7: 4, 2, 1 and
/// B = 6: 3, 2, 1. The sizes sum to B and there are ⌊log₂ B⌋ + 1 groups (the bit length of B).
/// Which sample lands in which group is a uniform random shuffle.
public enum GroupPartition {
    /// How a batch is cut: USDC's halving groups, or the two baselines it is compared with.
    public enum Grouping: Int, CaseIterable, Sendable {
        /// Recursive halving, shuffled (USDC).
        case halving = 0
        /// Every sample its own group: sample-level gates.
        case sample = 1
        /// The whole batch one group: batch-level gates.
        case batch = 2
        /// ⌈B/2⌉ samples in halving groups, the other ⌊B/2⌋ each its own group, shuffled: halving
        /// puts half the batch in its largest group, so single-sample decisions (inference at
        /// batch 1) are rare in training; this trains both regimes alike.
        case mixed = 3

        public var name: String { ["halving", "sample", "batch", "mixed"][rawValue] }

        /// Number of groups of a batch of `batch` ≥ 1 samples.
        public func groupCount(batch: Int) -> Int {
            switch self {
            case .halving: GroupPartition.groupCount(batch: batch)
            case .sample: batch
            case .batch: 1
            case .mixed: GroupPartition.groupCount(batch: batch - batch / 2) + batch / 2
            }
        }
    }

    /// Number of halving groups of a batch of `batch` ≥ 1 samples: its bit length.
    public static func groupCount(batch: Int) -> Int {
        precondition(batch >= 1)
        return Int.bitWidth - batch.leadingZeroBitCount
    }

    /// Writes the halving sizes of a batch of `batch` ≥ 1 into `sizes` (`groupCount(batch:)` values).
    public static func sizes(batch: Int, into sizes: UnsafeMutableBufferPointer<Int64>) {
        precondition(sizes.count == groupCount(batch: batch))
        var left = batch
        for k in sizes.indices {
            // The last group takes the one sample left; every other takes half, rounded up.
            let size = k == sizes.count - 1 ? left : (left + 1) / 2
            sizes[k] = Int64(size)
            left -= size
        }
    }

    /// Fills `sizes` as `sizes(batch:into:)` with batch = `groups.count`, then `groups` with each
    /// sample's group id: the ids laid out group after group, then shuffled (Fisher–Yates, B − 1
    /// draws from `rng`).
    public static func sample(groups: UnsafeMutableBufferPointer<Int64>, sizes: UnsafeMutableBufferPointer<Int64>,
                              rng: inout Xoshiro256StarStar) {
        self.sizes(batch: groups.count, into: sizes)
        shuffle(groups: groups, sizes: sizes, rng: &rng)
    }

    /// Lays the ids out group after group by `sizes` (which sum to `groups.count`), then
    /// shuffles them (Fisher–Yates, B − 1 draws from `rng`).
    static func shuffle(groups: UnsafeMutableBufferPointer<Int64>, sizes: UnsafeMutableBufferPointer<Int64>,
                        rng: inout Xoshiro256StarStar) {
        var at = 0
        for (k, size) in sizes.enumerated() {
            for _ in 0..<Int(size) {
                groups[at] = Int64(k)
                at += 1
            }
        }
        var i = groups.count - 1
        while i > 0 {
            let j = Int(rng.nextBelow(UInt64(i + 1)))
            groups.swapAt(i, j)
            i -= 1
        }
    }

    /// Fills `groups` and `sizes` for `grouping`: `sample(groups:sizes:rng:)` for halving; ids
    /// 0..<B (sample) or all 0 (batch) without drawing; for mixed, the halving sizes of ⌈B/2⌉
    /// then ⌊B/2⌋ ones, shuffled.
    public static func sample(_ grouping: Grouping, groups: UnsafeMutableBufferPointer<Int64>,
                              sizes: UnsafeMutableBufferPointer<Int64>, rng: inout Xoshiro256StarStar) {
        precondition(sizes.count == grouping.groupCount(batch: groups.count))
        switch grouping {
        case .halving:
            sample(groups: groups, sizes: sizes, rng: &rng)
        case .sample:
            for b in groups.indices { groups[b] = Int64(b) }
            sizes.update(repeating: 1)
        case .batch:
            groups.update(repeating: 0)
            sizes[0] = Int64(groups.count)
        case .mixed:
            let halved = groups.count - groups.count / 2, halving = groupCount(batch: halved)
            self.sizes(batch: halved, into: UnsafeMutableBufferPointer(rebasing: sizes[0..<halving]))
            UnsafeMutableBufferPointer(rebasing: sizes[halving...]).update(repeating: 1)
            shuffle(groups: groups, sizes: sizes, rng: &rng)
        }
    }

    /// Standard logistic noise log(u) − log(1 − u), one uniform draw per value: the difference
    /// of the two Gumbel noises of a run/skip pair, so σ((d + noise)/τ) is the two-class
    /// Gumbel-softmax probability of "run" for log-odds d.
    public static func logisticNoise(into noise: UnsafeMutableBufferPointer<Double>, rng: inout Xoshiro256StarStar) {
        for i in noise.indices {
            let u = rng.nextOpenUnit()
            noise[i] = naturalLog(u) - naturalLog1p(-u)
        }
    }
}
