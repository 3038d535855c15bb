/// The one error type of the core. Every entry point validates its arguments and
/// throws this instead of trapping, so a bad call from Python becomes an exception.
public struct UVCError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Which Python exception the bridge raises.
    public enum Kind: Int32, Sendable {
        case value = 1
        case type = 2
    }

    public var kind: Kind
    /// Name of the offending argument, as the Python API spells it.
    public var argument: String
    /// What was wrong and what was expected.
    public var message: String

    public init(_ argument: String, _ message: String, kind: Kind = .value) {
        self.kind = kind
        self.argument = argument
        self.message = message
    }

    public var description: String { "\(argument): \(message)" }
}

/// Throws `UVCError(argument, message)` unless `condition` holds.
@inlinable @inline(__always)
public func require(_ condition: Bool, _ argument: String, _ message: @autoclosure () -> String) throws(UVCError) {
    if !condition { throw UVCError(argument, message()) }
}
