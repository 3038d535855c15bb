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

    func testSelectReturnsTheRankKValue() {
        var rng = Xoshiro256StarStar(seed: 21)
        for n in [1, 2, 7, 8, 9, 64, 200, 3072] {
            for ties in [false, true] {
                let s = scores(n, ties: ties, &rng)
                let sorted = s.sorted()
                var scratch = [Double](repeating: 0, count: n)
                for k in Set([0, n / 3, n / 2, n - 1]) {
                    let got = s.withUnsafeBufferPointer { v in
                        scratch.withUnsafeMutableBufferPointer { OrderStatistic.select(v, rank: k, scratch: $0) }
                    }
                    XCTAssertEqual(got, sorted[k], "n=\(n) k=\(k) ties=\(ties)")
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
                            LowestGroups(v, count: k, scratch: sc).writeKeepMask(v, into: $0)
                        }
                    }
                }
                var expected = [Double](repeating: 1, count: n)
                for i in lowest(s, k) { expected[i] = 0 }
                XCTAssertEqual(mask, expected, "n=\(n) k=\(k)")
            }
        }
    }

    /// LeastSum of one row with the given hint: value, slope, factors and the hint it leaves.
    private func leastSum(_ s: [Double], count: Double, dual: Double, eta: Double,
                          hint start: SelectionHint) -> (value: Double, slope: Double, factors: [Double], hint: SelectionHint) {
        var factors = [Double](repeating: -1, count: s.count)
        var scratch = [Double](repeating: .nan, count: LeastSum.scratchCount(s.count))
        var hint = start
        let sum = s.withUnsafeBufferPointer { v in
            scratch.withUnsafeMutableBufferPointer { sc in
                factors.withUnsafeMutableBufferPointer {
                    LeastSum(v, count: count, dual: dual, eta: eta, hint: &hint, scratch: sc, factors: $0)
                }
            }
        }
        return (sum.value, sum.slope, factors, hint)
    }

    /// Checks a LeastSum result against sorting; `label` names the case.
    private func checkLeastSum(_ s: [Double], count: Double, dual: Double, eta: Double, hint: SelectionHint,
                               _ label: String) -> SelectionHint {
        let got = leastSum(s, count: count, dual: dual, eta: eta, hint: hint)
        let whole = Int(count), frac = count - Double(whole)
        let order = lowest(s, s.count)
        let expectedValue = order.prefix(whole).map { s[$0] }.reduce(0, +) + frac * s[order[whole]]
        XCTAssertEqual(got.value, expectedValue, accuracy: 1e-12 * max(1, expectedValue), label)
        XCTAssertEqual(got.slope, s[order[whole]], label)
        XCTAssertEqual(got.hint.value, s[order[whole]], label)
        XCTAssertEqual(got.hint.rank, Double(whole), label)
        var expected = [Double](repeating: 1, count: s.count)
        for i in order.prefix(whole) { expected[i] = 1 / (1 + 2 * eta * dual) }
        expected[order[whole]] = 1 / (1 + 2 * eta * dual * frac)
        XCTAssertEqual(got.factors, expected, label)
        return got.hint
    }

    func testLeastSumMatchesTheReferenceWhateverTheHint() {
        var rng = Xoshiro256StarStar(seed: 8)
        let eta = 0.01, dual = 3.0
        for n in [2, 9, 64, 100, 3072] {
            for ties in [false, true] {
                let s = scores(n, ties: ties, &rng)
                let sorted = s.sorted(), spacing = 3 / Double(n)
                for count in [0.0, 0.4, 1.0, Double(n) / 2 + 0.25, Double(n - 1)] {
                    let whole = Int(count)
                    // None; right on; a rank that moved; a band far off; one holding everything;
                    // one too narrow to hold anything but the exact value.
                    let hints = [SelectionHint.none,
                                 SelectionHint(value: sorted[whole], rank: Double(whole), spacing: spacing),
                                 SelectionHint(value: sorted[whole], rank: Double(max(whole - 3, 0)), spacing: spacing),
                                 SelectionHint(value: sorted[0], rank: Double(whole), spacing: spacing / 8),
                                 SelectionHint(value: sorted[whole], rank: Double(whole), spacing: 1e6),
                                 SelectionHint(value: sorted[whole], rank: Double(whole), spacing: 1e-300)]
                    for hint in hints {
                        _ = checkLeastSum(s, count: count, dual: dual, eta: eta, hint: hint,
                                          "n=\(n) count=\(count) ties=\(ties) hint=\(hint)")
                    }
                }
            }
        }
    }

    func testHintsStayFiniteWhenTheBandKeepsMissing() {
        // A row whose scores collapse by 10^4 per step leaves every band behind: the spacing
        // doubles each step and must stop at `maxSpacing` instead of reaching ∞ (issue 17).
        var rng = Xoshiro256StarStar(seed: 21)
        var s = scores(64, ties: false, &rng)
        var hint = SelectionHint(value: 1, rank: 10, spacing: SelectionHint.maxSpacing)
        for step in 0..<200 {
            hint = checkLeastSum(s, count: 10.5, dual: 1, eta: 0.01, hint: hint, "step \(step)")
            XCTAssertTrue(hint.spacing.isFinite && hint.spacing >= 0 && hint.spacing <= SelectionHint.maxSpacing,
                          "step \(step): spacing \(hint.spacing)")
            for i in s.indices { s[i] *= i % 2 == 0 ? 1e-4 : 1e4 }
            if s.contains(where: { !$0.isFinite }) { s = scores(64, ties: false, &rng) }
        }
        XCTAssertEqual(SelectionHint.bounded(.infinity), SelectionHint.maxSpacing)
        XCTAssertEqual(SelectionHint.bounded(.nan), 0)
        XCTAssertEqual(SelectionHint.bounded(-1), 0)
    }

    func testAnInfiniteRawDualShrinksToZeroButNeverGivesNaN() {
        // Scores in the denormals make the raw dual (dual over their mean) infinite.
        let s = [3.0, 1.0, 2.0, 5.0]
        var got = leastSum(s, count: 2, dual: .infinity, eta: 0.1, hint: .none)
        XCTAssertEqual(got.factors, [1, 0, 0, 1], "the two lowest go to 0; the next one has weight 0")
        got = leastSum(s, count: 1.5, dual: .infinity, eta: 0, hint: .none)
        XCTAssertEqual(got.factors, [1, 1, 1, 1], "eta = 0 shrinks nothing")
        got = leastSum(s, count: 1.5, dual: .infinity, eta: 0.1, hint: .none)
        XCTAssertEqual(got.factors, [1, 0, 0, 1])
    }

    func testDriftingRowsTakeTheBandAndStayExact() {
        // The solver's case: a row whose scores drift a little and whose count moves, step after
        // step. After the first selection every one should come from the band around the last.
        var rng = Xoshiro256StarStar(seed: 13)
        var s = scores(3072, ties: false, &rng)
        var hint = SelectionHint.none
        var count = 1500.3
        for step in 0..<40 {
            let before = hint
            hint = checkLeastSum(s, count: count, dual: 2, eta: 0.05, hint: hint, "step \(step)")
            if step > 0 {
                // The band path sets the spacing from what the band held (2 · halfWidth / held);
                // the fallback doubles or halves it.
                let target = LeastSum.bandTarget(s.count)
                let center = before.value + (Double(Int(count)) - before.rank) * before.spacing
                let halfWidth = Double(target / 2) * before.spacing
                let held = s.filter { $0 >= center - halfWidth && $0 < center + halfWidth }.count
                XCTAssertEqual(hint.spacing, 2 * halfWidth / Double(held), "step \(step): the band was used")
            }
            for i in s.indices { s[i] *= 1 + 1e-3 * (rng.nextOpenUnit() - 0.5) }
            count += 2.7
        }
    }

    func testLeastSumIsConvexPiecewiseLinearAndExactAtIntegers() {
        let s = [0.5, 0.1, 0.9, 0.3]
        func value(_ c: Double) -> Double {
            var f = [Double](repeating: 0, count: 4), sc = f, hint = SelectionHint.none
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

    private func checkedCopy(_ s: [Double]) -> (ok: Bool, sum: Double, copy: [Double]) {
        var copy = [Double](repeating: -7, count: s.count)
        let (ok, sum) = s.withUnsafeBufferPointer { v in copy.withUnsafeMutableBufferPointer { Kernels.checkedCopy(v, into: $0) } }
        return (ok, sum, copy)
    }

    func testCheckedCopyCopiesSumsAndRejectsWhatAllFiniteNonNegativeRejects() {
        var rng = Xoshiro256StarStar(seed: 9)
        for n in [0, 3, 4, 8, 13, 100] {
            let s = scores(n, ties: false, &rng)
            let got = checkedCopy(s)
            XCTAssertTrue(got.ok)
            XCTAssertEqual(got.sum, s.reduce(0, +), accuracy: 1e-12)
            XCTAssertEqual(got.copy, s)
        }
        for bad in [Double.nan, -1, -.leastNonzeroMagnitude, .infinity, -.infinity] {
            for at in [2, 9] {
                var s = [Double](repeating: 1, count: 11)
                s[at] = bad
                XCTAssertFalse(checkedCopy(s).ok, "\(bad) at \(at)")
            }
        }
        XCTAssertTrue(checkedCopy([-0.0, 0, 2, 0, -0.0]).ok)
        // Finite scores whose sum overflows are still accepted.
        XCTAssertTrue(checkedCopy([Double](repeating: .greatestFiniteMagnitude, count: 6)).ok)
    }

    func testShrinkCollectingWritesFactorsBelowTheBandAndCollectsIt() {
        var rng = Xoshiro256StarStar(seed: 10)
        for n in [0, 5, 8, 16, 29, 300] {
            for ties in [false, true] {
                let s = scores(n, ties: ties, &rng)
                let (lo, hi) = ties ? (2.0, 4.0) : (1.0, 1.4)
                let inBand = s.indices.filter { s[$0] >= lo && s[$0] < hi }
                for capacity in [inBand.count, max(inBand.count - 1, 0)] {
                    var factors = [Double](repeating: -1, count: n)
                    var band = [Double](repeating: .nan, count: 2 * capacity)
                    var marks = [UInt64](repeating: 7, count: n / 8)
                    let got = s.withUnsafeBufferPointer { v in
                        factors.withUnsafeMutableBufferPointer { f in
                            band.withUnsafeMutableBufferPointer { b in
                                marks.withUnsafeMutableBufferPointer {
                                    Kernels.shrinkCollecting(v, below: lo, band: hi, full: 0.25, into: f, band: b, marks: $0)
                                }
                            }
                        }
                    }
                    guard capacity == inBand.count else {
                        XCTAssertNil(got, "n=\(n): \(inBand.count) band values overflow \(capacity) pairs")
                        continue
                    }
                    let r = try! XCTUnwrap(got)
                    XCTAssertEqual(r.count, s.filter { $0 < lo }.count)
                    XCTAssertEqual(r.sum, s.filter { $0 < lo }.reduce(0, +), accuracy: 1e-12)
                    XCTAssertEqual(r.collected, inBand.count)
                    XCTAssertEqual(band, inBand.flatMap { [s[$0], Double($0)] }, "pairs in index order")
                    XCTAssertEqual(factors, s.map { $0 < lo ? 0.25 : 1 })
                }
            }
        }
    }
}
