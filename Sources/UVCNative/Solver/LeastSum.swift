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
    init(_ scores: UnsafeBufferPointer<Double>, count: Int, hint: Double, scratch: UnsafeMutableBufferPointer<Double>) {
        self.init(count: count, next: OrderStatistic.select(scores, rank: count, hint: hint, scratch: scratch),
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
    /// `hint` is last step's `next` (−1 for none) and receives this step's.
    init(_ scores: UnsafeBufferPointer<Double>, count s: Double, dual: Double, eta: Double, hint: inout Double,
         scratch: UnsafeMutableBufferPointer<Double>, factors: UnsafeMutableBufferPointer<Double>) {
        let whole = Int(s)
        let frac = s - Double(whole)
        let next = OrderStatistic.select(scores, rank: whole, hint: hint, scratch: scratch)
        hint = next
        let full = 1 / (1 + 2 * eta * dual)
        let partial = 1 / (1 + 2 * eta * dual * frac)
        let (sum, below) = Kernels.shrinkBelow(scores, next, full: full, into: factors)
        let lowest = LowestGroups(count: whole, next: next, below: below)
        lowest.forEachTie(scores) { i, ordinal in
            factors[i] = ordinal < lowest.tiesSelected ? full : partial
        }
        value = sum + Double(lowest.tiesSelected) * next + frac * next
        slope = next
    }
}
