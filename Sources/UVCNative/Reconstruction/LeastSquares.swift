import COpenBLAS

/// Layer-wise least-squares reconstruction (issue: compress without a training pipeline): the
/// Gram matrices of a linear layer's inputs X and outputs Y over calibration batches, and the
/// ridge solution for a kept subset of the input columns,
///
///     W = argmin ‖X_S W − Y‖² + λ·‖W‖²  =  (X_Sᵀ X_S + λ I)⁻¹ X_Sᵀ Y,
///
/// with λ = `ridge` × the mean of diag(X_Sᵀ X_S) (scale-free). Row-major float64 throughout;
/// the products run in OpenBLAS, the solves in its LAPACK.
public enum LeastSquares {
    /// Adds XᵀX to `xtx` (d × d) and XᵀY to `xty` (d × m) for a batch X (n × d) and Y (n × m).
    /// Float32 batches are widened to float64 in blocks of rows first, so the sums keep float64
    /// precision over any number of batches.
    /// - Precondition: the sizes match; `x`, `y` finite (see `validate`).
    /// - Complexity: O(n·d·(d + m)).
    public static func accumulate<T: BinaryFloatingPoint>(x: UnsafeBufferPointer<T>, y: UnsafeBufferPointer<T>,
                                                          rows n: Int, inputs d: Int, outputs m: Int,
                                                          xtx: UnsafeMutableBufferPointer<Double>,
                                                          xty: UnsafeMutableBufferPointer<Double>) {
        precondition(x.count == n * d && y.count == n * m && xtx.count == d * d && xty.count == d * m)
        precondition(d <= maxWidth && m <= maxWidth)
        guard n > 0, d > 0 else { return }
        // Blocks of rows keep every BLAS dimension inside Int32 and the widened copies small.
        let block = max(1, min(n, (1 << 20) / max(1, d + m)))
        var xb = [Double](repeating: 0, count: T.self == Double.self ? 0 : block * d)
        var yb = [Double](repeating: 0, count: T.self == Double.self ? 0 : block * m)
        var start = 0
        while start < n {
            let rows = min(block, n - start)
            if T.self == Double.self {
                x.withMemoryRebound(to: Double.self) { xd in
                    y.withMemoryRebound(to: Double.self) { yd in
                        product(xd.baseAddress! + start * d, yd.baseAddress.map { $0 + start * m }, rows, d, m, xtx, xty)
                    }
                }
            } else {
                for i in 0..<(rows * d) { xb[i] = Double(x[start * d + i]) }
                for i in 0..<(rows * m) { yb[i] = Double(y[start * m + i]) }
                xb.withUnsafeBufferPointer { xp in
                    yb.withUnsafeBufferPointer { yp in product(xp.baseAddress!, yp.baseAddress, rows, d, m, xtx, xty) }
                }
            }
            start += rows
        }
    }

    /// The widest layer (inputs or outputs) the reconstruction takes: its d × d Gram is 8 GiB.
    public static let maxWidth = 1 << 15

    private static func product(_ x: UnsafePointer<Double>, _ y: UnsafePointer<Double>?, _ n: Int, _ d: Int, _ m: Int,
                                _ xtx: UnsafeMutableBufferPointer<Double>, _ xty: UnsafeMutableBufferPointer<Double>) {
        // Upper triangle by syrk, then mirrored: XᵀX is symmetric.
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(d), Int32(n), 1, x, Int32(d), 1, xtx.baseAddress,
                    Int32(d))
        for i in 0..<d {
            for j in 0..<i { xtx[i * d + j] = xtx[j * d + i] }
        }
        if m > 0, let y {
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(d), Int32(m), Int32(n), 1, x, Int32(d), y,
                        Int32(m), 1, xty.baseAddress, Int32(m))
        }
    }

    /// How `solve` solved the system.
    public enum Method: Int, Sendable {
        /// Cholesky of X_SᵀX_S + λI.
        case cholesky = 0
        /// Not positive definite, or numerically singular (Cholesky pivots spanning more than
        /// 1e14): an eigen-decomposition, with eigenvalues below `1e-12 ×` the largest treated as
        /// zero (the minimum-norm solution).
        case eigen = 1
    }

    /// The ridge solution for the kept columns `kept` (indices into the d inputs, increasing)
    /// written into `out` (k × m, k = kept.count). `xtx` (d × d) and `xty` (d × m) as
    /// `accumulate` left them.
    /// - Precondition: `kept` valid indices; `out.count == kept.count * m`.
    /// - Complexity: O(k³ + k²·m).
    public static func solve(xtx: UnsafeBufferPointer<Double>, xty: UnsafeBufferPointer<Double>, d: Int, m: Int,
                             kept: [Int], ridge: Double, into out: UnsafeMutableBufferPointer<Double>) -> Method {
        let k = kept.count
        precondition(xtx.count == d * d && xty.count == d * m && out.count == k * m && d <= maxWidth && m <= maxWidth)
        guard k > 0 else { return .cholesky }
        var a = [Double](repeating: 0, count: k * k)
        var trace = 0.0
        for (r, i) in kept.enumerated() {
            for (c, j) in kept.enumerated() { a[r * k + c] = xtx[i * d + j] }
            trace += xtx[i * d + i]
        }
        let shift = ridge * (trace > 0 ? trace / Double(k) : 1)
        for r in 0..<k { a[r * k + r] += shift }
        for (r, i) in kept.enumerated() {
            for c in 0..<m { out[r * m + c] = xty[i * m + c] }
        }
        // A is symmetric, so row- and column-major agree; B goes to LAPACK's column-major layout
        // (b[c·k + r] = B[r][c]) and the solution comes back the same way.
        var factor = a
        var info: Int32 = 0, n = Int32(k), nrhs = Int32(m), lda = Int32(k)
        factor.withUnsafeMutableBufferPointer { dpotrf_("U", &n, $0.baseAddress, &lda, &info) }
        // A factor whose pivots span more than 1e14 (squared) is numerically singular: Cholesky
        // then returns one of many solutions, the eigen path the minimum-norm one.
        let pivots = (0..<k).map { factor[$0 * k + $0] * factor[$0 * k + $0] }
        if info == 0, let low = pivots.min(), let high = pivots.max(), low > 1e-14 * high {
            var b = [Double](repeating: 0, count: k * m)
            for r in 0..<k {
                for c in 0..<m { b[c * k + r] = out[r * m + c] }
            }
            var ldb = Int32(k)
            factor.withUnsafeBufferPointer { f in
                b.withUnsafeMutableBufferPointer { dpotrs_("U", &n, &nrhs, f.baseAddress, &lda, $0.baseAddress, &ldb, &info) }
            }
            if info == 0 {
                for r in 0..<k {
                    for c in 0..<m { out[r * m + c] = b[c * k + r] }
                }
                return .cholesky
            }
        }
        eigenSolve(a, k: k, m: m, out: out)
        return .eigen
    }

    /// The minimum-norm solution through A = V diag(w) Vᵀ.
    private static func eigenSolve(_ a: [Double], k: Int, m: Int, out: UnsafeMutableBufferPointer<Double>) {
        var v = a, w = [Double](repeating: 0, count: k)
        var n = Int32(k), lda = Int32(k), info: Int32 = 0, lwork: Int32 = -1, liwork: Int32 = -1
        var qwork = 0.0, qiwork: Int32 = 0
        dsyevd_("V", "U", &n, &v, &lda, &w, &qwork, &lwork, &qiwork, &liwork, &info)
        lwork = Int32(qwork)
        liwork = qiwork
        var work = [Double](repeating: 0, count: Int(lwork)), iwork = [Int32](repeating: 0, count: Int(liwork))
        dsyevd_("V", "U", &n, &v, &lda, &w, &work, &lwork, &iwork, &liwork, &info)
        // Column-major V: eigenvector j is v[j*k ..< (j+1)*k].
        let top = w.map(abs).max() ?? 0
        let b = Array(out)
        out.update(repeating: 0)
        for j in 0..<k where w[j] > 1e-12 * top {
            for c in 0..<m {
                var dot = 0.0
                for r in 0..<k { dot += v[j * k + r] * b[r * m + c] }
                let s = dot / w[j]
                for r in 0..<k { out[r * m + c] += v[j * k + r] * s }
            }
        }
    }
}
