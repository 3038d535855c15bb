// Vectorised passes over score rows: the solver's hot path (a DeiT-Base step reads ~46 000
// scores). Eight lanes at a time, no data-dependent branches except on rare events.

typealias Lanes = SIMD8<Double>

enum Kernels {
    @inline(__always)
    static func load(_ p: UnsafePointer<Double>, _ i: Int) -> Lanes {
        UnsafeRawPointer(p + i).loadUnaligned(as: Lanes.self)
    }

    /// Whether every value is finite and ≥ 0 (−0 included); NaN fails both comparisons.
    static func allFiniteNonNegative(_ values: UnsafeBufferPointer<Double>) -> Bool {
        guard let p = values.baseAddress else { return true }
        var ok = SIMDMask<SIMD8<Int64>>(repeating: true)
        let n = values.count, whole = n - n % 8
        var i = 0
        while i < whole {
            let v = load(p, i)
            ok .&= (v .>= 0) .& (v .<= .greatestFiniteMagnitude)
            i += 8
        }
        var tail = all(ok)
        while i < n {
            tail = tail && values[i] >= 0 && values[i] <= .greatestFiniteMagnitude
            i += 1
        }
        return tail
    }

    /// Σ values.
    static func sum(_ values: UnsafeBufferPointer<Double>) -> Double {
        guard let p = values.baseAddress else { return 0 }
        var acc = Lanes.zero
        let n = values.count, whole = n - n % 8
        var i = 0
        while i < whole {
            acc += load(p, i)
            i += 8
        }
        var total = acc.sum()
        while i < n {
            total += values[i]
            i += 1
        }
        return total
    }

    /// Number of values < t.
    static func countBelow(_ values: UnsafeBufferPointer<Double>, _ t: Double) -> Int {
        guard let p = values.baseAddress else { return 0 }
        var acc = SIMD8<Int64>.zero
        let n = values.count, whole = n - n % 8
        var i = 0
        let limit = Lanes(repeating: t)
        while i < whole {
            acc.replace(with: acc &+ 1, where: load(p, i) .< limit)
            i += 8
        }
        var count = Int(acc.wrappedSum())
        while i < n {
            count &+= values[i] < t ? 1 : 0
            i += 1
        }
        return count
    }

    /// Writes `full` where value < t and 1 elsewhere; returns the sum of the values < t and
    /// how many there are.
    static func shrinkBelow(_ values: UnsafeBufferPointer<Double>, _ t: Double, full: Double,
                            into factors: UnsafeMutableBufferPointer<Double>) -> (sum: Double, count: Int) {
        guard let p = values.baseAddress, let q = factors.baseAddress else { return (0, 0) }
        var sum = Lanes.zero
        var count = SIMD8<Int64>.zero
        let limit = Lanes(repeating: t), shrunk = Lanes(repeating: full), one = Lanes(repeating: 1)
        let n = values.count, whole = n - n % 8
        var i = 0
        while i < whole {
            let v = load(p, i)
            let m = v .< limit
            UnsafeMutableRawPointer(q + i).storeBytes(of: one.replacing(with: shrunk, where: m), as: Lanes.self)
            sum += Lanes.zero.replacing(with: v, where: m)
            count.replace(with: count &+ 1, where: m)
            i += 8
        }
        var total = sum.sum(), below = Int(count.wrappedSum())
        while i < n {
            let isBelow = values[i] < t
            factors[i] = isBelow ? full : 1
            total += isBelow ? values[i] : 0
            below &+= isBelow ? 1 : 0
            i += 1
        }
        return (total, below)
    }
}

extension Kernels {
    /// Index of the first value equal to t at or after `start`, or nil.
    static func firstEqual(_ values: UnsafeBufferPointer<Double>, _ t: Double, from start: Int) -> Int? {
        guard let p = values.baseAddress else { return nil }
        let n = values.count, target = Lanes(repeating: t)
        var i = start
        while i + 8 <= n {
            if any(load(p, i) .== target) { break }
            i += 8
        }
        while i < n {
            if values[i] == t { return i }
            i += 1
        }
        return nil
    }
}
