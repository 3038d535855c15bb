/// SplitMix64 (Steele, Lea, Flood 2014): turns one 64-bit seed into well-mixed words.
/// Used only to seed `Xoshiro256StarStar`, as its authors recommend.
public struct SplitMix64: Hashable, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// xoshiro256** 1.0 (Blackman, Vigna 2018): the core's one random source. Its four words are
/// part of the solver state, so a restored solver draws exactly the numbers the original would.
public struct Xoshiro256StarStar: Hashable, Sendable {
    public private(set) var s0, s1, s2, s3: UInt64

    /// Seeds the four words from SplitMix64(seed); any seed, zero included, gives a valid state.
    public init(seed: UInt64) {
        var mix = SplitMix64(seed: seed)
        s0 = mix.next()
        s1 = mix.next()
        s2 = mix.next()
        s3 = mix.next()
    }

    /// Restores a saved state; the all-zero state is the generator's one fixed point and is refused.
    public init(words: (UInt64, UInt64, UInt64, UInt64)) throws(UVCError) {
        try require(words != (0, 0, 0, 0), "state.rng", "the all-zero xoshiro state is invalid")
        (s0, s1, s2, s3) = words
    }

    public var words: (UInt64, UInt64, UInt64, UInt64) { (s0, s1, s2, s3) }

    public mutating func next() -> UInt64 {
        let result = rotl(s1 &* 5, 7) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = rotl(s3, 45)
        return result
    }

    /// A uniform double in the open interval (0, 1): the top 53 bits, centred in their cell,
    /// so `log(u)` and `log(1 - u)` are always finite.
    public mutating func nextOpenUnit() -> Double {
        (Double(next() >> 11) + 0.5) * 0x1p-53
    }

    /// A uniform integer in 0..<n, n ≥ 1, without modulo bias (Lemire 2019: multiply, and
    /// redraw only in the rare case the low word falls in the biased sliver).
    public mutating func nextBelow(_ n: UInt64) -> UInt64 {
        precondition(n > 0)
        var m = next().multipliedFullWidth(by: n)
        if m.low < n {
            let threshold = (0 &- n) % n
            while m.low < threshold { m = next().multipliedFullWidth(by: n) }
        }
        return m.high
    }
}

@inline(__always)
private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }
