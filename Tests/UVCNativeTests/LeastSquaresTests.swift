import XCTest
@testable import UVCNative

/// Gram accumulation and the ridge solve against plain references.
final class LeastSquaresTests: XCTestCase {
    private func random(_ count: Int, _ rng: inout Xoshiro256StarStar) -> [Double] {
        (0..<count).map { _ in 2 * rng.nextOpenUnit() - 1 }
    }

    /// Xᵀ Y by the definition.
    private func product(_ x: [Double], _ y: [Double], n: Int, d: Int, m: Int) -> [Double] {
        var out = [Double](repeating: 0, count: d * m)
        for r in 0..<n {
            for i in 0..<d {
                for j in 0..<m { out[i * m + j] += x[r * d + i] * y[r * m + j] }
            }
        }
        return out
    }

    /// Solves A X = B (A k × k, B k × m, row-major) by Gaussian elimination with partial pivoting.
    private func reference(_ a: [Double], _ b: [Double], k: Int, m: Int) -> [Double] {
        var a = a, b = b
        for col in 0..<k {
            let pivot = (col..<k).max { abs(a[$0 * k + col]) < abs(a[$1 * k + col]) }!
            for c in 0..<k { a.swapAt(col * k + c, pivot * k + c) }
            for c in 0..<m { b.swapAt(col * m + c, pivot * m + c) }
            for r in (col + 1)..<k {
                let f = a[r * k + col] / a[col * k + col]
                for c in col..<k { a[r * k + c] -= f * a[col * k + c] }
                for c in 0..<m { b[r * m + c] -= f * b[col * m + c] }
            }
        }
        var x = [Double](repeating: 0, count: k * m)
        for r in stride(from: k - 1, through: 0, by: -1) {
            for c in 0..<m {
                var s = b[r * m + c]
                for j in (r + 1)..<k { s -= a[r * k + j] * x[j * m + c] }
                x[r * m + c] = s / a[r * k + r]
            }
        }
        return x
    }

    private func accumulate(_ x: [Double], _ y: [Double], n: Int, d: Int, m: Int,
                            _ xtx: inout [Double], _ xty: inout [Double]) {
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeBufferPointer { yp in
                xtx.withUnsafeMutableBufferPointer { a in
                    xty.withUnsafeMutableBufferPointer {
                        LeastSquares.accumulate(x: xp, y: yp, rows: n, inputs: d, outputs: m, xtx: a, xty: $0)
                    }
                }
            }
        }
    }

    func testGramsOverBatchesEqualOneProduct() {
        var rng = Xoshiro256StarStar(seed: 1)
        let (n, d, m) = (90, 7, 3)
        let x = random(n * d, &rng), y = random(n * m, &rng)
        var xtx = [Double](repeating: 0, count: d * d), xty = [Double](repeating: 0, count: d * m)
        for (start, rows) in [(0, 40), (40, 1), (41, 49)] {
            accumulate(Array(x[(start * d)..<((start + rows) * d)]), Array(y[(start * m)..<((start + rows) * m)]),
                       n: rows, d: d, m: m, &xtx, &xty)
        }
        for (got, want) in zip(xtx, product(x, x, n: n, d: d, m: d)) { XCTAssertEqual(got, want, accuracy: 1e-12) }
        for (got, want) in zip(xty, product(x, y, n: n, d: d, m: m)) { XCTAssertEqual(got, want, accuracy: 1e-12) }
        // Float32 batches are summed in float64: the same sums as their float64 values.
        var xtx32 = [Double](repeating: 0, count: d * d), xty32 = [Double](repeating: 0, count: d * m)
        let x32 = x.map(Float.init), y32 = y.map(Float.init)
        x32.withUnsafeBufferPointer { xp in
            y32.withUnsafeBufferPointer { yp in
                xtx32.withUnsafeMutableBufferPointer { a in
                    xty32.withUnsafeMutableBufferPointer {
                        LeastSquares.accumulate(x: xp, y: yp, rows: n, inputs: d, outputs: m, xtx: a, xty: $0)
                    }
                }
            }
        }
        let wide = x32.map(Double.init)
        for (got, want) in zip(xtx32, product(wide, wide, n: n, d: d, m: d)) { XCTAssertEqual(got, want, accuracy: 1e-12) }
    }

    private func solve(_ xtx: [Double], _ xty: [Double], d: Int, m: Int, kept: [Int], ridge: Double)
        -> ([Double], LeastSquares.Method) {
        var out = [Double](repeating: .nan, count: kept.count * m)
        let method = xtx.withUnsafeBufferPointer { a in
            xty.withUnsafeBufferPointer { b in
                out.withUnsafeMutableBufferPointer {
                    LeastSquares.solve(xtx: a, xty: b, d: d, m: m, kept: kept, ridge: ridge, into: $0)
                }
            }
        }
        return (out, method)
    }

    func testTheRidgeSolveMatchesTheNormalEquations() {
        var rng = Xoshiro256StarStar(seed: 2)
        let (n, d, m) = (60, 6, 4)
        var x = random(n * d, &rng)
        // Well and ill conditioned: column 5 nearly repeats column 0.
        for illConditioned in [false, true] {
            if illConditioned { for r in 0..<n { x[r * d + 5] = x[r * d] + 1e-7 * x[r * d + 5] } }
            let y = random(n * m, &rng)
            let xtx = product(x, x, n: n, d: d, m: d), xty = product(x, y, n: n, d: d, m: m)
            let kept = [0, 2, 3, 5], k = kept.count, ridge = illConditioned ? 1e-3 : 1e-6
            var a = kept.flatMap { i in kept.map { j in xtx[i * d + j] } }
            let shift = ridge * kept.map { xtx[$0 * d + $0] }.reduce(0, +) / Double(k)
            for r in 0..<k { a[r * k + r] += shift }
            let b = kept.flatMap { i in (0..<m).map { xty[i * m + $0] } }
            let (got, method) = solve(xtx, xty, d: d, m: m, kept: kept, ridge: ridge)
            XCTAssertEqual(method, .cholesky)
            for (g, w) in zip(got, reference(a, b, k: k, m: m)) { XCTAssertEqual(g, w, accuracy: 1e-8 * max(1, abs(w))) }
        }
    }

    func testASingularSystemFallsBackToTheMinimumNormSolution() {
        // Zero Grams (no signal): nothing to fit, the solution is zero.
        let (zero, method) = solve([Double](repeating: 0, count: 9), [Double](repeating: 0, count: 6), d: 3, m: 2,
                                   kept: [0, 1, 2], ridge: 0)
        XCTAssertEqual(method, .eigen)
        XCTAssertEqual(zero, [Double](repeating: 0, count: 6))
        // Two identical columns, no ridge: the fit splits the weight evenly between them.
        let x: [Double] = [1, 1, 2, 2, 3, 3, -1, -1], y: [Double] = [2, 4, 6, -2]
        let xtx = product(x, x, n: 4, d: 2, m: 2), xty = product(x, y, n: 4, d: 2, m: 1)
        let (w, _) = solve(xtx, xty, d: 2, m: 1, kept: [0, 1], ridge: 0)
        XCTAssertEqual(w[0] + w[1], 2, accuracy: 1e-9)
        XCTAssertEqual(w[0], w[1], accuracy: 1e-6)
    }
}
