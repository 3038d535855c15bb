/// The k lowest-scoring groups of one set (one layer's heads or neurons, or one head's value
/// dims) under the total order (score, index): ties go to the lower index, so a selection is
/// a function of the scores alone.
struct LowestGroups {
    /// Groups selected.
    let count: Int
    /// Score of the group of rank `count`: the next one to go (the cost of removing one more).
    let next: Double
    /// Groups scoring strictly below `next`; the rest of the selection are ties at `next`.
    let below: Int

    /// Selects the `count` lowest of `scores`, 0 ≤ count < scores.count (one group always stays).
    init(_ scores: UnsafeBufferPointer<Double>, count: Int, scratch: UnsafeMutableBufferPointer<Double>) {
        self.init(count: count, next: OrderStatistic.select(scores, rank: count, scratch: scratch),
                  scores: scores)
    }

    init(count: Int, next: Double, scores: UnsafeBufferPointer<Double>) {
        self.count = count
        self.next = next
        self.below = Kernels.countBelow(scores, next)
    }

    init(count: Int, next: Double, below: Int) {
        self.count = count
        self.next = next
        self.below = below
    }

    /// Ties at `next` taken into the selection (the lowest indices among them).
    var tiesSelected: Int { count - below }

    /// Calls `body(index, ordinal)` for the groups tied at `next`, in index order, up to and
    /// including the next group itself: ordinals below `tiesSelected` are selected, ordinal
    /// `tiesSelected` is the next group.
    @inline(__always)
    func forEachTie(_ scores: UnsafeBufferPointer<Double>, _ body: (Int, Int) -> Void) {
        var ordinal = 0, from = 0
        while ordinal <= tiesSelected, let i = Kernels.firstEqual(scores, next, from: from) {
            body(i, ordinal)
            ordinal += 1
            from = i + 1
        }
    }

    /// Writes a keep mask: 0 for the selected groups, 1 for the others.
    func writeKeepMask(_ scores: UnsafeBufferPointer<Double>, into mask: UnsafeMutableBufferPointer<Double>) {
        _ = Kernels.shrinkBelow(scores, next, full: 0, into: mask)
        forEachTie(scores) { i, ordinal in mask[i] = ordinal < tiesSelected ? 0 : 1 }
    }
}

/// Where a row's last selection landed: the rank and score of its next group and the score
/// gap per rank around it. The next selection collects the band of scores where it predicts
/// the new rank's score to lie. Only speed depends on it: every selection is the same without
/// it, and a LeastSum value the same up to the rounding of its sum.
public struct SelectionHint: Hashable, Sendable {
    /// The next group's score, or negative for none.
    public var value: Double
    /// Its rank.
    public var rank: Double
    /// Score per rank near it, ≥ 0; 0 for none.
    public var spacing: Double

    public init(value: Double, rank: Double, spacing: Double) {
        self.value = value
        self.rank = rank
        self.spacing = spacing
    }

    public static let none = SelectionHint(value: -1, rank: 0, spacing: 0)

    /// Largest spacing a hint keeps. Spacing doubles each step the band misses, and a band
    /// spans `bandTarget / 2` spacings on each side of a centre up to a row's length of them
    /// away: capped at 2^900, every band bound stays finite, so no hint reaches ∞ or 0/0.
    static let maxSpacing = 0x1p900

    /// `spacing` clamped to [0, `maxSpacing`]; NaN becomes 0 (no hint).
    @inline(__always)
    static func bounded(_ spacing: Double) -> Double {
        spacing >= 0 ? min(spacing, maxSpacing) : 0
    }
    /// Doubles per hint in the solver state.
    public static let encodedCount = 3
}

/// UVC's LeastSum_s(scores), the score mass of the s lowest groups, made piecewise linear in a
/// continuous count s: Σ_{rank < ⌊s⌋} score + frac(s) · score(rank ⌊s⌋). It is exact at integer s
/// and convex (its slope on (k, k+1) is the (k+1)-th smallest score, "the cost of the next
/// group"), so a count at equilibrium settles on an integer instead of flipping across one.
struct LeastSum {
    /// LeastSum_s in raw score units.
    let value: Double
    /// Its slope in s: the score of the next group.
    let slope: Double

    /// Computes LeastSum at `count` and writes the proximal factors of the groups it covers:
    /// `1 / (1 + 2·η·dual·w)` where w is the group's weight in LeastSum (1 for rank < ⌊s⌋,
    /// frac(s) for the next group); 1 for every other group. This is the proximal operator of
    /// η · dual · LeastSum over ‖w‖² (each score is the squared norm of its columns).
    ///
    /// `hint` is last step's (`.none` at first) and receives this step's. Scores move little
    /// from one step to the next, so the next group's score usually lies in the band around
    /// the hint: then one pass writes the factors below the band and collects the band, and
    /// the few scores in it settle the rest. Otherwise a selection and a second pass do.
    /// `scratch` must hold `scores.count` doubles, and `scratchCount` for the one-pass path.
    init(_ scores: UnsafeBufferPointer<Double>, count s: Double, dual: Double, eta: Double,
         hint: inout SelectionHint, scratch: UnsafeMutableBufferPointer<Double>,
         factors: UnsafeMutableBufferPointer<Double>) {
        let whole = Int(s)
        let frac = s - Double(whole)
        // The raw dual is ∞ when a kind's scores sit in the denormals (it is the unitless dual over
        // their mean): such groups shrink to 0, while η = 0 or a zero weight (frac = 0) must still
        // mean no shrink rather than 0 · ∞ = NaN.
        let rate = eta > 0 && dual > 0 ? 2 * eta * dual : 0
        let full = 1 / (1 + rate)
        let partial = frac > 0 ? 1 / (1 + rate * frac) : 1
        let target = LeastSum.bandTarget(scores.count)
        if hint.value >= 0, hint.spacing > 0 {
            // The band: `target` ranks around where the rank-`whole` score should be now.
            let center = hint.value + (Double(whole) - hint.rank) * hint.spacing
            let halfWidth = Double(target / 2) * hint.spacing
            switch LeastSum.banded(scores, rank: whole, from: center - halfWidth, to: center + halfWidth, full: full,
                                   partial: partial, scratch: scratch, factors: factors) {
            case .found(let sum, let next, let collected):
                value = sum + frac * next
                slope = next
                hint = SelectionHint(value: next, rank: Double(whole), spacing: SelectionHint.bounded(
                    collected >= 2 ? 2 * halfWidth / Double(collected) : 2 * hint.spacing))
                return
            case .overflow: hint.spacing *= 0.5
            case .outside: hint.spacing = SelectionHint.bounded(2 * hint.spacing)
            }
        }
        let next = OrderStatistic.select(scores, rank: whole, scratch: scratch)
        if hint.spacing == 0 { hint.spacing = SelectionHint.bounded(next * LeastSum.initialWidth / Double(target / 2)) }
        hint.value = next
        hint.rank = Double(whole)
        let (sum, below) = Kernels.shrinkBelow(scores, next, full: full, into: factors)
        let lowest = LowestGroups(count: whole, next: next, below: below)
        lowest.forEachTie(scores) { i, ordinal in
            factors[i] = ordinal < lowest.tiesSelected ? full : partial
        }
        value = sum + Double(lowest.tiesSelected) * next + frac * next
        slope = next
    }

    /// Scores a band should hold in a row of n: enough that the next group's rank rarely
    /// leaves it, few enough that collecting them stays cheap next to the pass.
    static func bandTarget(_ n: Int) -> Int { min(max(n / 16, 4), 16) }

    /// Scratch doubles a row of n needs for either path.
    static func scratchCount(_ n: Int) -> Int { max(n, 6 * bandTarget(n) + n / 8) }

    /// First band half-width, relative to the next group's score.
    static let initialWidth = 0x1p-7

    enum Banded {
        /// `sum`: the scores of the groups of rank < `rank`; `next`: that of rank `rank`.
        case found(sum: Double, next: Double, collected: Int)
        /// The band held too many scores.
        case overflow
        /// The rank-`rank` score lies outside the band.
        case outside
    }

    /// The one-pass selection: factors `full` below the band, then the band's scores, sorted
    /// by (score, index), take `full`, `partial` (the next group) or 1 by their rank.
    private static func banded(_ scores: UnsafeBufferPointer<Double>, rank: Int, from lo: Double, to hi: Double,
                               full: Double, partial: Double, scratch: UnsafeMutableBufferPointer<Double>,
                               factors: UnsafeMutableBufferPointer<Double>) -> Banded {
        // Scratch: the (score, index) pairs, then one mark word per chunk of eight scores.
        let pairCount = 6 * bandTarget(scores.count), chunks = scores.count / 8
        guard scratch.count >= pairCount + chunks else { return .outside }
        let pairs = UnsafeMutableBufferPointer(rebasing: scratch[0..<pairCount])
        let pass = UnsafeMutableBufferPointer(rebasing: scratch[pairCount..<(pairCount + chunks)])
            .withMemoryRebound(to: UInt64.self) { marks in
                Kernels.shrinkCollecting(scores, below: lo, band: hi,
                                         full: full, into: factors, band: pairs, marks: marks)
            }
        guard let pass else { return .overflow }
        let r = rank - pass.count, m = pass.collected
        guard r >= 0, r < m else { return .outside }
        // Insertion sort by score; it is stable, and the pairs arrive in index order.
        for j in 1..<max(m, 1) {
            let v = pairs[2 * j], index = pairs[2 * j + 1]
            var at = j
            while at > 0, pairs[2 * (at - 1)] > v {
                pairs[2 * at] = pairs[2 * (at - 1)]
                pairs[2 * at + 1] = pairs[2 * (at - 1) + 1]
                at -= 1
            }
            pairs[2 * at] = v
            pairs[2 * at + 1] = index
        }
        var sum = pass.sum
        for j in 0..<m {
            let i = Int(pairs[2 * j + 1])
            if j < r { sum += pairs[2 * j] }
            factors[i] = j < r ? full : j == r ? partial : 1
        }
        return .found(sum: sum, next: pairs[2 * r], collected: m)
    }
}
