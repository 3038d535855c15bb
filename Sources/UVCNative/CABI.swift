// The C ABI the bridge calls. Each function takes raw buffers with their shapes, returns
// 0 on success or a `UVCError.Kind` code with a message in `error`; it never traps on
// bad input. The semantic checks (sizes, ranges) live here, next to the mathematics.

/// A read-only array argument as the bridge hands it over.
struct ArrayArg<Element> {
    let name: String
    let buffer: UnsafeBufferPointer<Element>
    let shape: [Int]

    init(_ name: String, _ base: UnsafePointer<Element>, _ shape: UnsafePointer<Int>, _ ndim: Int) {
        self.name = name
        self.shape = (0..<ndim).map { shape[$0] }
        self.buffer = UnsafeBufferPointer(start: base, count: self.shape.reduce(1, *))
    }

    /// Throws unless the array has exactly `expected` as its shape.
    func expect(_ expected: [Int]) throws(UVCError) {
        try require(shape == expected, name,
                    "expected shape \(shapeString(expected)), got \(shapeString(shape))")
    }
}

/// A writable array argument.
struct OutArg<Element> {
    let name: String
    let buffer: UnsafeMutableBufferPointer<Element>
    let shape: [Int]

    init(_ name: String, _ base: UnsafeMutablePointer<Element>, _ shape: UnsafePointer<Int>, _ ndim: Int) {
        self.name = name
        self.shape = (0..<ndim).map { shape[$0] }
        self.buffer = UnsafeMutableBufferPointer(start: base, count: self.shape.reduce(1, *))
    }

    func expect(_ expected: [Int]) throws(UVCError) {
        try require(shape == expected, name,
                    "expected shape \(shapeString(expected)), got \(shapeString(shape))")
    }
}

func shapeString(_ shape: [Int]) -> String {
    shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map { String($0) }.joined(separator: ", ") + ")"
}

/// Runs `body`, turning a thrown `UVCError` into a status code and a NUL-terminated message.
func cCall(_ message: UnsafeMutablePointer<CChar>, _ capacity: Int, _ body: () throws(UVCError) -> Void) -> Int32 {
    do throws(UVCError) {
        try body()
        return 0
    } catch {
        var written = 0
        for byte in error.description.utf8 {
            guard written < capacity - 1 else { break }
            message[written] = CChar(bitPattern: byte)
            written += 1
        }
        if capacity > 0 { message[written] = 0 }
        return error.kind.rawValue
    }
}
