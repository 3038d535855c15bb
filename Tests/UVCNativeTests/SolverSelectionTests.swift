import XCTest
@testable import UVCNative

/// Order statistics, group selection and LeastSum against sort-based references.
final class SolverSelectionTests: XCTestCase {
    /// Random scores with many ties (values on a coarse grid) or none.
    private func scores(_ n: Int, ties: Bool, _ rng: inout Xoshiro256StarStar) -> [Double] {
        (0..<n).map { _ in ties ? Double(rng.next() % 7) : rng.nextOpenUnit() * 3 }
    }

    /// Indices of the k lowest under (score, index).
    private func lowest(_ s: [Double], _ k: Int) -> [Int] {
        Array(s.indices.sorted { (s[$0], $0) < (s[$1], $1) }.prefix(k))
    }

    func testSelectReturnsTheRankKValueWithAndWithoutHints() {
        var rng = Xoshiro256StarStar(seed: 21)
        for n in [1, 2, 7, 8, 9, 64, 200, 3072] {
            for ties in [false, true] {
                let s = scores(n, ties: ties, &rng)
                let sorted = s.sorted()
                var scratch = [Double](repeating: 0, count: n)
                for k in Set([0, n / 3, n / 2, n - 1]) {
                    // No hint, the exact answer, a nearby value on either side, and far ones.
                    let hints = [-1, sorted[k], sorted[max(k - 3, 0)], sorted[min(k + 3, n - 1)],
                                 sorted[0], sorted[n - 1], 10]
                    for hint in hints {
                        let got = s.withUnsafeBufferPointer { v in
                            scratch.withUnsafeMutableBufferPointer { OrderStatistic.select(v, rank: k, hint: hint, scratch: $0) }
                        }
                        XCTAssertEqual(got, sorted[k], "n=\(n) k=\(k) ties=\(ties) hint=\(hint)")
                    }
                }
            }
        }
    }

    func testQuickselectOnAdversarialInputs() {
        let constant = [Double](repeating: 2, count: 500)
        let ascending: [Double] = (0..<500).map { Double($0) }
        let alternating: [Double] = (0..<500).map { Double($0 % 2) }
        for values in [constant, ascending, Array(ascending.reversed()), alternating] {
            for k in [0, 249, 499] {
                var a = values
                let got = a.withUnsafeMutableBufferPointer { OrderStatistic.quickselect($0, rank: k) }
                XCTAssertEqual(got, values.sorted()[k])
            }
        }
    }

    func testKeepMaskRemovesTheLowestAndBreaksTiesByIndex() {
        var rng = Xoshiro256StarStar(seed: 4)
        for n in [1, 5, 64, 301] {
            let s = scores(n, ties: true, &rng)
            var scratch = [Double](repeating: 0, count: n)
            for k in Set([0, 1, n / 2, n - 1]) where k < n {
                var mask = [Double](repeating: -1, count: n)
                s.withUnsafeBufferPointer { v in
                    scratch.withUnsafeMutableBufferPointer { sc in
                        mask.withUnsafeMutableBufferPointer {
                            LowestGroups(v, count: k, hint: -1, scratch: sc).writeKeepMask(v, into: $0)
                        }
                    }
                }
                var expected = [Double](repeating: 1, count: n)
                for i in lowest(s, k) { expected[i] = 0 }
                XCTAssertEqual(mask, expected, "n=\(n) k=\(k)")
            }
        }
    }

    func testLeastSumValueSlopeAndProximalFactorsMatchTheReference() {
        var rng = Xoshiro256StarStar(seed: 8)
        let eta = 0.01, dual = 3.0
        for n in [2, 9, 100] {
            for ties in [false, true] {
                let s = scores(n, ties: ties, &rng)
                for count in [0.0, 0.4, 1.0, Double(n) / 2 + 0.25, Double(n - 1)] {
                    var factors = [Double](repeating: -1, count: n)
                    var scratch = [Double](repeating: 0, count: n)
                    var hint = -1.0
                    let sum = s.withUnsafeBufferPointer { v in
                        scratch.withUnsafeMutableBufferPointer { sc in
                            factors.withUnsafeMutableBufferPointer {
                                LeastSum(v, count: count, dual: dual, eta: eta, hint: &hint, scratch: sc, factors: $0)
                            }
                        }
                    }
                    let whole = Int(count), frac = count - Double(whole)
                    let order = lowest(s, n)
                    let expectedValue = order.prefix(whole).map { s[$0] }.reduce(0, +) + frac * s[order[whole]]
                    XCTAssertEqual(sum.value, expectedValue, accuracy: 1e-12)
                    XCTAssertEqual(sum.slope, s[order[whole]])
                    XCTAssertEqual(hint, s[order[whole]])
                    var expected = [Double](repeating: 1, count: n)
                    for i in order.prefix(whole) { expected[i] = 1 / (1 + 2 * eta * dual) }
                    if frac > 0 { expected[order[whole]] = 1 / (1 + 2 * eta * dual * frac) }
                    XCTAssertEqual(factors, expected, "n=\(n) count=\(count) ties=\(ties)")
                }
            }
        }
    }

    func testLeastSumIsConvexPiecewiseLinearAndExactAtIntegers() {
        let s = [0.5, 0.1, 0.9, 0.3]
        func value(_ c: Double) -> Double {
            var f = [Double](repeating: 0, count: 4), sc = f, hint = -1.0
            return s.withUnsafeBufferPointer { v in
                sc.withUnsafeMutableBufferPointer { scr in
                    f.withUnsafeMutableBufferPointer { LeastSum(v, count: c, dual: 0, eta: 0, hint: &hint, scratch: scr, factors: $0).value }
                }
            }
        }
        XCTAssertEqual(value(0), 0)
        XCTAssertEqual(value(1), 0.1, accuracy: 1e-15)
        XCTAssertEqual(value(2), 0.4, accuracy: 1e-15)
        XCTAssertEqual(value(3), 0.9, accuracy: 1e-15)
        XCTAssertEqual(value(1.5), 0.25, accuracy: 1e-15)
        // Slopes 0.1, 0.3, 0.5 on the three cells: non-decreasing.
        XCTAssertEqual(value(2.5) - value(2), 0.25, accuracy: 1e-15)
    }

    func testKernelsMatchPlainLoops() {
        var rng = Xoshiro256StarStar(seed: 6)
        for n in [0, 3, 8, 13, 100] {
            let s = scores(n, ties: true, &rng)
            s.withUnsafeBufferPointer { v in
                XCTAssertEqual(Kernels.sum(v), s.reduce(0, +), accuracy: 1e-12)
                XCTAssertEqual(Kernels.countBelow(v, 3), s.filter { $0 < 3 }.count)
                XCTAssertTrue(Kernels.allFiniteNonNegative(v))
                XCTAssertEqual(Kernels.firstEqual(v, 4, from: 0), s.firstIndex(of: 4))
            }
        }
        for bad in [Double.nan, -1, .infinity] {
            var s = [Double](repeating: 1, count: 11)
            s[9] = bad
            XCTAssertFalse(s.withUnsafeBufferPointer { Kernels.allFiniteNonNegative($0) }, "\(bad)")
            s[9] = 1
            s[2] = bad
            XCTAssertFalse(s.withUnsafeBufferPointer { Kernels.allFiniteNonNegative($0) }, "\(bad)")
        }
        XCTAssertTrue([-0.0, 0, 2].withUnsafeBufferPointer { Kernels.allFiniteNonNegative($0) })
    }
}
