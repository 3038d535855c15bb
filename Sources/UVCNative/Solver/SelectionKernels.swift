// Vectorised passes over score rows: the solver's hot path (a DeiT-Base step reads ~46 000
// scores). Eight lanes at a time (four in the two kernels of the step's own passes, see
// `shrinkCollecting`), no data-dependent branches except on rare events.

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

extension Kernels {
    /// Copies `values` into `copy` (as many) while checking them: whether every value is
    /// finite and ≥ 0, and their sum. One pass where a check, a sum and a copy would take three.
    static func checkedCopy(_ values: UnsafeBufferPointer<Double>,
                            into copy: UnsafeMutableBufferPointer<Double>) -> (ok: Bool, sum: Double) {
        precondition(copy.count == values.count)
        guard let p = values.baseAddress, let q = copy.baseAddress else { return (true, 0) }
        // A NaN or an infinity makes the sum non-finite; a negative value sets the sign bit of
        // the OR of all bit patterns (four lanes and bit operations: see `shrinkCollecting`).
        typealias Quad = SIMD4<Double>
        var acc = Quad.zero, signs = SIMD4<UInt64>.zero
        let n = values.count, whole = n - n % 4
        var i = 0
        while i < whole {
            let v = UnsafeRawPointer(p + i).loadUnaligned(as: Quad.self)
            UnsafeMutableRawPointer(q + i).storeBytes(of: v, as: Quad.self)
            acc += v
            signs |= unsafeBitCast(v, to: SIMD4<UInt64>.self)
            i += 4
        }
        let folded = signs.lowHalf | signs.highHalf
        var total = acc.sum(), bits = folded[0] | folded[1]
        while i < n {
            copy[i] = values[i]
            total += values[i]
            bits |= values[i].bitPattern
            i += 1
        }
        guard total.isFinite, bits >> 63 == 0 else {
            // Also reached for −0 and when finite scores sum past the largest double.
            return (allFiniteNonNegative(values), total)
        }
        return (true, total)
    }

    /// `shrinkBelow(values, lo)` that also collects the band [lo, hi): each value in it is
    /// appended to `band` as the pair (value, index), in index order. Returns the sum and count
    /// of the values < lo and the number of pairs, or nil (`factors` partly written) when the
    /// band holds more than `band.count / 2` values. `marks` must hold `values.count / 8` words.
    static func shrinkCollecting(_ values: UnsafeBufferPointer<Double>, below lo: Double, band hi: Double,
                                 full: Double, into factors: UnsafeMutableBufferPointer<Double>,
                                 band: UnsafeMutableBufferPointer<Double>,
                                 marks: UnsafeMutableBufferPointer<UInt64>) -> (sum: Double, count: Int, collected: Int)? {
        guard let p = values.baseAddress, let q = factors.baseAddress else { return (0, 0, 0) }
        let n = values.count, chunks = n / 8
        precondition(marks.count >= chunks)
        // A branch-free pass marks the chunks of eight that hold band values; a second loop
        // collects from the marked ones. Two four-lane halves per chunk and bit operations on
        // the comparison masks: wider vectors, `replacing(with:where:)`, `any` or a branch in
        // the pass compile to spills and lane-by-lane code on baseline x86-64.
        typealias Quad = SIMD4<Double>
        typealias QuadBits = SIMD4<UInt64>
        var sum = Quad.zero, count = QuadBits.zero
        let low = Quad(repeating: lo), high = Quad(repeating: hi)
        let one = unsafeBitCast(Quad(repeating: 1), to: QuadBits.self)
        let flip = one ^ unsafeBitCast(Quad(repeating: full), to: QuadBits.self)
        @inline(__always) func half(_ at: Int) -> QuadBits {
            let v = UnsafeRawPointer(p + at).loadUnaligned(as: Quad.self)
            let below = unsafeBitCast(v .< low, to: QuadBits.self)
            UnsafeMutableRawPointer(q + at).storeBytes(of: unsafeBitCast(one ^ (below & flip), to: Quad.self), as: Quad.self)
            sum += unsafeBitCast(unsafeBitCast(v, to: QuadBits.self) & below, to: Quad.self)
            count &-= below  // all-ones lanes: − (−1)
            return unsafeBitCast(v .< high, to: QuadBits.self) & ~below
        }
        for c in 0..<chunks {
            let hits = half(8 * c) | half(8 * c + 4)
            let folded = hits.lowHalf | hits.highHalf
            marks[c] = folded[0] | folded[1]
        }
        var total = sum.sum(), below = Int(count.wrappedSum())
        let capacity = band.count / 2
        var collected = 0
        func collect(_ j: Int) -> Bool {
            guard collected < capacity else { return false }
            band[2 * collected] = values[j]
            band[2 * collected + 1] = Double(j)
            collected += 1
            return true
        }
        for c in 0..<chunks where marks[c] != 0 {
            for j in (8 * c)..<(8 * c + 8) where values[j] >= lo && values[j] < hi {
                guard collect(j) else { return nil }
            }
        }
        for j in (8 * chunks)..<n {
            let v = values[j]
            factors[j] = v < lo ? full : 1
            if v < lo {
                total += v
                below += 1
            } else if v < hi {
                guard collect(j) else { return nil }
            }
        }
        return (total, below, collected)
    }
}
