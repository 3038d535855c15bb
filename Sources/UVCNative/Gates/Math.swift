// Elementary functions come from the C library: the core links no Foundation.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@inline(__always) func naturalLog(_ x: Double) -> Double { log(x) }
@inline(__always) func naturalLog1p(_ x: Double) -> Double { log1p(x) }
@inline(__always) func exponential(_ x: Double) -> Double { exp(x) }

/// 1 / (1 + e^-x), evaluated so that neither branch overflows.
@inline(__always) func logistic(_ x: Double) -> Double {
    if x >= 0 { return 1 / (1 + exp(-x)) }
    let e = exp(x)
    return e / (1 + e)
}

@inline(__always) func power(_ x: Double, _ y: Double) -> Double { pow(x, y) }
