/// The k-th smallest of n non-negative finite doubles. With a good guess (last step's answer)
/// it costs one vectorised count and one pass whose branch is almost always "skip"; without
/// one, a quickselect. The answer never depends on the guess.
enum OrderStatistic {
    /// The value of rank `k` (0-based) of `values`. `hint` is a guess of that value (negative
    /// for none); `scratch` must hold `values.count` doubles.
    static func select(_ values: UnsafeBufferPointer<Double>, rank k: Int, hint: Double,
                       scratch: UnsafeMutableBufferPointer<Double>) -> Double {
        precondition(k >= 0 && k < values.count && scratch.count >= values.count)
        // Bounded heaps beat quickselect while they stay small next to the row.
        let heapLimit = max(8, values.count / 8)
        if hint >= 0 {
            let below = Kernels.countBelow(values, hint)
            if below <= k, k - below < heapLimit {
                // The answer is the (k − below)-th smallest value ≥ hint.
                return bounded(values, count: k - below + 1, within: hint, upward: true)
            }
            if below > k, below - k <= heapLimit {
                // The answer is the (below − k)-th largest value < hint.
                return bounded(values, count: below - k, within: hint, upward: false)
            }
        }
        for i in values.indices { scratch[i] = values[i] }
        return quickselect(UnsafeMutableBufferPointer(rebasing: scratch[0..<values.count]), rank: k)
    }

    /// Upward: the `m`-th smallest of the values ≥ `edge`; downward: the `m`-th largest of the
    /// values < `edge`. A heap keeps the m best seen; a value enters only inside the band
    /// between `edge` and the heap's root, tested eight at a time, so after the first few
    /// hundred values almost no chunk needs scalar work.
    private static func bounded(_ values: UnsafeBufferPointer<Double>, count m: Int, within edge: Double,
                                upward: Bool) -> Double {
        withUnsafeTemporaryAllocation(of: Double.self, capacity: m) { storage in
            var heap = BandHeap(storage: storage, capacity: m, edge: edge, upward: upward)
            let n = values.count
            var i = 0
            if let p = values.baseAddress {
                while i + 8 <= n {
                    let v = Kernels.load(p, i)
                    let above = upward ? v .>= Lanes(repeating: heap.low) : v .> Lanes(repeating: heap.low)
                    if any(above .& (v .< Lanes(repeating: heap.high))) {
                        for j in i..<(i + 8) { heap.offer(values[j]) }
                    }
                    i += 8
                }
            }
            while i < n {
                heap.offer(values[i])
                i += 1
            }
            return heap.answer
        }
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

/// The bounded heap of `OrderStatistic.bounded` and the band of values that can still enter it.
private struct BandHeap {
    /// A max-heap of keys: values (upward) or negated values (downward).
    let storage: UnsafeMutableBufferPointer<Double>
    let capacity: Int
    let sign: Double
    let upward: Bool
    var size = 0
    /// The band: upward [low, high) = [edge, root); downward (low, high) = (root, edge). While
    /// the heap is not full it is the whole side of `edge`.
    var low: Double
    var high: Double

    init(storage: UnsafeMutableBufferPointer<Double>, capacity: Int, edge: Double, upward: Bool) {
        self.storage = storage
        self.capacity = capacity
        self.upward = upward
        sign = upward ? 1 : -1
        low = upward ? edge : -.infinity
        high = upward ? .infinity : edge
    }

    var answer: Double {
        precondition(size == capacity)
        return sign * storage[0]
    }

    @inline(__always)
    mutating func offer(_ v: Double) {
        guard (upward ? v >= low : v > low) && v < high else { return }
        let heap = storage
        let entry = sign * v
        if size < capacity {
            var i = size
            heap[i] = entry
            size += 1
            while i > 0, heap[(i - 1) / 2] < heap[i] {
                heap.swapAt(i, (i - 1) / 2)
                i = (i - 1) / 2
            }
        } else {
            // Inside the band the entry beats the root: it replaces it and sinks.
            heap[0] = entry
            var i = 0
            while true {
                let a = 2 * i + 1, b = a + 1
                var top = i
                if a < size, heap[a] > heap[top] { top = a }
                if b < size, heap[b] > heap[top] { top = b }
                if top == i { break }
                heap.swapAt(i, top)
                i = top
            }
        }
        guard size == capacity else { return }
        if upward { high = heap[0] } else { low = -heap[0] }
    }
}
