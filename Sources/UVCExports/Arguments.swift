// Reading a call's `uvc_array` arguments: kind, layout, shape and aliasing checks, each
// failure a `UVCError` naming the argument as the Python API spells it.
import UVCABI
import UVCNative

/// The arguments of one call, with their names in order.
struct Arguments {
    let base: UnsafePointer<uvc_array>
    let names: [String]

    /// - Precondition: none; a wrong count throws a TypeError listing the expected arguments.
    init(_ base: UnsafePointer<uvc_array>?, _ count: Int, _ names: [String]) throws(UVCError) {
        guard count == names.count, let base else {
            throw UVCError("arguments", "expected \(names.count) (\(names.joined(separator: ", "))), got \(count)",
                           kind: .type)
        }
        (self.base, self.names) = (base, names)
    }

    func isNone(_ i: Int) -> Bool { base[i].kind == Int32(UVC_NONE) }

    /// Argument `i` as an array of `kind` elements; with `shape` given (−1 ends it), exactly that shape.
    /// - Complexity: O(rank) on success; the element count is checked for overflow.
    func view<T>(_ i: Int, _: T.Type, _ kind: Int32, _ what: String, _ shape: (Int, Int, Int)? = nil,
                 output: Bool = false) throws(UVCError) -> ArrayView<T> {
        let a = base[i]
        guard a.kind == kind else {
            throw UVCError(names[i], "must be \(what), got " + (a.data == nil ? "an unsupported object" : "another dtype"),
                           kind: .type)
        }
        try require(a.flags & Int32(UVC_CONTIGUOUS) != 0, names[i], "must be C-contiguous (use numpy.ascontiguousarray)")
        var n = 1
        for d in 0..<Int(a.rank) {
            let (m, overflow) = n.multipliedReportingOverflow(by: Int(a.shape[d]))
            try require(!overflow && m <= Int.max / 8, names[i], "has too many elements")
            n = m
        }
        let v = ArrayView<T>(name: names[i], buffer: .init(start: a.data?.assumingMemoryBound(to: T.self), count: n),
                             shape: .init(start: a.shape, count: Int(a.rank)))
        if let (d0, d1, d2) = shape { try v.expect(d0, d1, d2) }
        if output { try checkOutput(i, n * MemoryLayout<T>.stride) }
        return v
    }

    func doubles(_ i: Int, _ shape: (Int, Int, Int)? = nil) throws(UVCError) -> ArrayView<Double> {
        try view(i, Double.self, Int32(UVC_FLOAT64), "a float64 array", shape)
    }

    /// A writable float64 array of exactly `shape` that shares no memory with another argument.
    func output(_ i: Int, _ d0: Int, _ d1: Int = -1, _ d2: Int = -1) throws(UVCError) -> UnsafeMutableBufferPointer<Double> {
        try view(i, Double.self, Int32(UVC_FLOAT64), "a float64 array", (d0, d1, d2), output: true).buffer
    }

    /// A writable float64 array of any shape (checked as `output(_:_:_:_:)` otherwise).
    func output(_ i: Int) throws(UVCError) -> ArrayView<Double> {
        try view(i, Double.self, Int32(UVC_FLOAT64), "a float64 array", output: true)
    }

    func input(_ i: Int, _ d0: Int, _ d1: Int = -1, _ d2: Int = -1) throws(UVCError) -> UnsafeBufferPointer<Double> {
        try doubles(i, (d0, d1, d2)).input
    }

    func ints(_ i: Int, _ shape: (Int, Int, Int)? = nil, output: Bool = false) throws(UVCError) -> ArrayView<Int64> {
        try view(i, Int64.self, Int32(UVC_INT64), "an int64 array", shape, output: output)
    }

    func bytes(_ i: Int) throws(UVCError) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(try view(i, UInt8.self, Int32(UVC_BYTES), "bytes").input)
    }

    private func checkOutput(_ i: Int, _ length: Int) throws(UVCError) {
        try require(base[i].flags & Int32(UVC_WRITABLE) != 0, names[i], "must be writable")
        guard length > 0, let start = base[i].data else { return }
        for j in 0..<names.count where j != i {
            let b = base[j]
            guard let other = b.data, b.kind != Int32(UVC_NONE), b.flags & Int32(UVC_CONTIGUOUS) != 0 else { continue }
            var n = b.kind == Int32(UVC_BYTES) ? 1 : b.kind == Int32(UVC_FLOAT32) ? 4 : 8
            for d in 0..<Int(b.rank) { n = n.multipliedReportingOverflow(by: Int(b.shape[d])).partialValue }
            if n > 0 && start < other + n && other < start + length {
                throw UVCError(names[i], "shares memory with argument '\(names[j])'")
            }
        }
    }

    /// A number: a rank-0 float64 or int64.
    func real(_ i: Int) throws(UVCError) -> Double {
        let a = base[i]
        if a.rank == 0, a.kind == Int32(UVC_FLOAT64) { return a.data!.load(as: Double.self) }
        if a.rank == 0, a.kind == Int32(UVC_INT64) { return Double(a.data!.load(as: Int64.self)) }
        throw UVCError(names[i], "must be a number", kind: .type)
    }

    /// An int (rank-0 int64) in `range`.
    func integer(_ i: Int, in range: ClosedRange<Int64> = .min ... .max) throws(UVCError) -> Int64 {
        let a = base[i]
        guard a.rank == 0, a.kind == Int32(UVC_INT64) else {
            throw UVCError(names[i], "must be an int that fits in int64", kind: .type)
        }
        let v = a.data!.load(as: Int64.self)
        try require(range.contains(v), names[i], "must be an int in [\(range.lowerBound), \(range.upperBound)], got \(v)")
        return v
    }
}

/// One array argument: its elements and shape.
struct ArrayView<Element> {
    let name: String
    let buffer: UnsafeMutableBufferPointer<Element>
    let shape: UnsafeBufferPointer<Int64>

    init(name: String, buffer: UnsafeBufferPointer<Element>, shape: UnsafeBufferPointer<Int64>) {
        (self.name, self.buffer, self.shape) = (name, UnsafeMutableBufferPointer(mutating: buffer), shape)
    }

    var input: UnsafeBufferPointer<Element> { UnsafeBufferPointer(buffer) }
    func extent(_ d: Int) -> Int { Int(shape[d]) }

    /// Throws unless the shape is exactly (`d0`, `d1`, `d2`), the trailing −1s left out.
    func expect(_ d0: Int, _ d1: Int = -1, _ d2: Int = -1) throws(UVCError) {
        let rank = d0 < 0 ? 0 : d1 < 0 ? 1 : d2 < 0 ? 2 : 3
        if shape.count == rank && (rank < 1 || Int(shape[0]) == d0) && (rank < 2 || Int(shape[1]) == d1)
            && (rank < 3 || Int(shape[2]) == d2) { return }
        let want = [d0, d1, d2].prefix(rank).map(String.init), got = shape.map { String($0) }
        throw UVCError(name, "expected shape \(tuple(want)), got \(tuple(got))")
    }

    private func tuple(_ s: [String]) -> String { s.count == 1 ? "(\(s[0]),)" : "(" + s.joined(separator: ", ") + ")" }
}
