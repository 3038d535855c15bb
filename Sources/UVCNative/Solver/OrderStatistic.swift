/// The k-th smallest of n finite doubles, by quickselect on a copy. (The solver's hot path
/// first tries the band around last step's answer: `LeastSum`.)
enum OrderStatistic {
    /// The value of rank `k` (0-based) of `values`; `scratch` must hold `values.count` doubles.
    static func select(_ values: UnsafeBufferPointer<Double>, rank k: Int,
                       scratch: UnsafeMutableBufferPointer<Double>) -> Double {
        precondition(k >= 0 && k < values.count && scratch.count >= values.count)
        let copy = UnsafeMutableBufferPointer(rebasing: scratch[0..<values.count])
        _ = copy.update(fromContentsOf: values)
        return quickselect(copy, rank: k)
    }

    /// Three-way-partition quickselect with a median-of-three pivot; falls back to sorting a
    /// range that does not shrink fast enough, so the worst case stays O(n log n).
    static func quickselect(_ a: UnsafeMutableBufferPointer<Double>, rank k: Int) -> Double {
        var lo = 0, hi = a.count - 1
        var budget = 2 * (Int.bitWidth - a.count.leadingZeroBitCount) + 4
        while lo < hi {
            if budget == 0 {
                var range = UnsafeMutableBufferPointer(rebasing: a[lo...hi])
                range.sort()
                return a[k]
            }
            budget -= 1
            let mid = lo + (hi - lo) / 2
            let pivot = max(min(a[lo], a[mid]), min(max(a[lo], a[mid]), a[hi]))
            // Dijkstra partition: [lo, lt) < pivot, [lt, i) == pivot, (gt, hi] > pivot.
            var lt = lo, i = lo, gt = hi
            while i <= gt {
                if a[i] < pivot {
                    a.swapAt(lt, i)
                    lt += 1
                    i += 1
                } else if a[i] > pivot {
                    a.swapAt(i, gt)
                    gt -= 1
                } else {
                    i += 1
                }
            }
            if k < lt { hi = lt - 1 } else if k > gt { lo = gt + 1 } else { return pivot }
        }
        return a[k]
    }
}
