/// The versioned byte strings the core saves its objects' state to.
///
/// Layout, little-endian: the 8 bytes `uvc.arch`, the object's tag (UInt32: what was saved),
/// its format version (UInt32), then the payload: 64-bit words (Double bit patterns or
/// Int64), each run of them preceded by its length. Readers check every length against what
/// the loading object expects, so a truncated, padded or foreign string is refused whole.
public enum Archive {
    static let magic: [UInt8] = Array("uvc.arch".utf8)

    /// What a byte string holds, and the format version of that payload.
    public enum Tag: UInt32, Sendable {
        case solver = 1
        case sampler = 2

        var name: String { self == .solver ? "a solver" : "a group sampler" }
    }

    public struct Writer {
        public private(set) var bytes: [UInt8] = []

        public init(_ tag: Tag, version: UInt32) {
            bytes = Archive.magic
            put32(tag.rawValue)
            put32(version)
        }

        private mutating func put32(_ v: UInt32) {
            for k in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * k))) }
        }

        public mutating func put(_ v: UInt64) {
            for k in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * k))) }
        }

        /// A run of doubles, length first.
        public mutating func put<C: Collection>(_ values: C) where C.Element == Double {
            put(UInt64(values.count))
            for v in values { put(v.bitPattern) }
        }
    }

    public struct Reader {
        let bytes: UnsafeRawBufferPointer
        var at = 0
        let argument: String

        /// Checks the header: magic, tag and version.
        /// - Precondition: none; a malformed string throws, naming `argument`.
        public init(_ bytes: UnsafeRawBufferPointer, _ tag: Tag, version: UInt32, argument: String) throws(UVCError) {
            self.bytes = bytes
            self.argument = argument
            try require(bytes.count >= 16 && Array(bytes[0..<8]) == Archive.magic, argument,
                        "is not a uvc state (\(bytes.count) bytes without the 'uvc.arch' header)")
            at = 8
            let (t, v) = (take32(), take32())
            try require(t == tag.rawValue, argument, "holds the state of \(Tag(rawValue: t)?.name ?? "tag \(t)"), "
                        + "expected \(tag.name)")
            try require(v == version, argument, "has format version \(v); this uvc reads version \(version) "
                        + "(saved by another uvc version: resume with that version, or start again)")
        }

        private mutating func take32() -> UInt32 {
            defer { at += 4 }
            return (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * $1) }
        }

        public mutating func word() throws(UVCError) -> UInt64 {
            try require(bytes.count - at >= 8, argument, "is truncated at byte \(at) of \(bytes.count)")
            defer { at += 8 }
            return (0..<8).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * $1) }
        }

        /// A run of exactly `count` doubles (`what` names it in errors).
        public mutating func doubles(_ count: Int, _ what: String) throws(UVCError) -> [Double] {
            let n = try word()
            try require(n == UInt64(count), argument, "\(what): holds \(n) values, expected \(count) for this "
                        + "object's spec and settings")
            try require(bytes.count - at >= 8 * count, argument, "is truncated at byte \(at) of \(bytes.count)")
            var out = [Double](repeating: 0, count: count)
            for i in 0..<count { out[i] = Double(bitPattern: try word()) }
            return out
        }

        /// Throws unless every byte was read.
        public func finish() throws(UVCError) {
            try require(at == bytes.count, argument, "has \(bytes.count - at) bytes past its end")
        }
    }
}
