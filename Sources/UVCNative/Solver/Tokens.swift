/// Token pruning as a learned, budgeted dimension (`SolverConfig.pruneTokens`).
///
/// Block l < depth − 1 removes r_l ≥ 0 tokens after its MHSA, so tokens[l + 1] = tokens[l] − r_l
/// and tokens[0] = numTokens: the schedule is non-increasing by construction. The r_l live in
/// {r ≥ 0, Σ r ≤ numPatches − 2}, so no block goes below the prefix, one kept patch and the
/// fused token. A block whose MHSA does not run (by the gate decisions) removes nothing: it has
/// no attention to rank tokens by.
///
/// The task side is UVC's LeastSum with class attention as the score (in a model without a
/// class token, the attention each token receives, averaged over the queries): block l pays
/// y_l · (depth − 1 − l) · LeastSum_{r_l}(a_l), the class-attention mass of the r_l least attended
/// non-prefix tokens among those entering it (normalised like the group kinds), once for every
/// later block, since a dropped token is missing from all of them; its slope, the next token's
/// attention, is the price of removing one more. The budget side is −∂MACs/∂r_l = Σ_{m > l}
/// ∂MACs/∂tokens[m]: one more token dropped by block l is one fewer in every later block. Both
/// sides thus scale with the blocks after l, and a token of average attention is priced like a
/// group of average score: the solver drops tokens where class attention is concentrated and
/// trades them against heads, dims, neurons and blocks under the one budget.
///
/// A token step moves the cost of every later block; with flat attention (no curvature in
/// LeastSum) the (r, z) pair would circle the budget instead of settling on z alone. The budget
/// price is therefore the augmented Lagrangian's `budgetPrice`, the same one the counts and
/// gates see, so no axis gets a head start on the others. Tokens are not weights: no proximal
/// shrink.
extension Solver {
    /// Tokens entering each block (`depth` values) when block l removes `removal[l]` of them:
    /// none where the MHSA does not run (gate decisions), never below prefix + 2 (integer
    /// removals rounded one by one may sum past the continuous ones' cap). Without token
    /// pruning (`removal` empty) every block takes all tokens.
    public func tokenSchedule(_ removal: [Double]) -> [Double] {
        var tokens = [Double](repeating: Double(spec.numTokens), count: spec.depth)
        guard !removal.isEmpty else { return tokens }
        let decisions = gateDecisions()
        let floor = Double(spec.prefixTokens + 2)
        for l in 0..<(spec.depth - 1) {
            tokens[l + 1] = decisions[2 * l] == 1 ? max(tokens[l] - removal[l], floor) : tokens[l]
        }
        return tokens
    }

    /// The schedule the masks and the plan use: integer removals, gate decisions.
    public var committedTokens: [Int] { tokenSchedule(state.tokenCommitted).map { Int($0) } }

    /// Checks `token_scores`: (depth, numTokens) values, finite and ≥ 0.
    func validateTokenScores(_ scores: UnsafeBufferPointer<Double>) throws(UVCError) {
        try require(scores.count == spec.depth * spec.numTokens, "token_scores",
                    "expected shape (\(spec.depth), \(spec.numTokens)), got \(scores.count) values")
        guard Kernels.allFiniteNonNegative(scores) else {
            let i = scores.firstIndex { !($0.isFinite && $0 >= 0) } ?? 0
            throw UVCError("token_scores", "scores must be finite and >= 0; entry \(i) is \(scores[i])")
        }
        // They are normalised by their mean: a sum past the largest double would make it ∞/∞.
        try require(Kernels.sum(scores).isFinite, "token_scores",
                    "scores must sum to a finite float64 (they are attention probabilities, each <= 1); their sum overflows")
    }

    /// Per block l < depth − 1: LeastSum of its removal over the class attention of the non-prefix
    /// tokens entering it (the committed schedule's first tokens[l] entries of row l; nil scores
    /// count every token alike), in units of the mean entry over all those rows, times the
    /// blocks after l; and its slope.
    func tokenLeastSums(_ scores: UnsafeBufferPointer<Double>?) -> (leastSums: [Double], slopes: [Double]) {
        let n = spec.numTokens, prefix = spec.prefixTokens, blocks = spec.depth - 1
        var leastSums = [Double](repeating: 0, count: blocks)
        var slopes = leastSums
        let present = committedTokens
        let uniform = [Double](repeating: 1, count: n)
        var scratch = [Double](repeating: 0, count: LeastSum.scratchCount(n))
        var unused = scratch
        uniform.withUnsafeBufferPointer { uniform in
            func row(_ b: Int) -> UnsafeBufferPointer<Double> {
                let source = scores ?? uniform
                let start = scores == nil ? prefix : b * n + prefix
                return UnsafeBufferPointer(rebasing: source[start..<(start + present[b] - prefix)])
            }
            var total = 0.0, entries = 0
            for b in 0..<blocks {
                total += Kernels.sum(row(b))
                entries += present[b] - prefix
            }
            let unit = total / Double(entries)
            guard unit > 0 else { return }
            scratch.withUnsafeMutableBufferPointer { scratch in
                unused.withUnsafeMutableBufferPointer { unused in
                    for b in 0..<blocks {
                        let r = row(b)
                        var hint = SelectionHint.none
                        // A row holds at least 2 tokens; one always stays.
                        let sum = LeastSum(r, count: min(state.tokenRemoval[b], Double(r.count - 1)), dual: 0, eta: 0,
                                           hint: &hint, scratch: scratch,
                                           factors: UnsafeMutableBufferPointer(rebasing: unused[0..<r.count]))
                        let later = Double(blocks - b)
                        leastSums[b] = later * sum.value / (unit * Double(r.count))
                        slopes[b] = later * sum.slope / unit
                    }
                }
            }
        }
        return (leastSums, slopes)
    }

    /// Projected, clipped gradient step on the token removals, in units of the patches:
    /// g_l = y_l · slope_l − price · patches · (Σ_{m > l} ∂MACs/∂tokens[m]) / denseMACs
    /// (`budgetPrice`; 0 budget term where block l's MHSA does not run), scaled to
    /// ‖g‖∞ ≤ 1, then r ← Π(r − tokenLR · patches · g),
    /// Π the Euclidean projection onto {r ≥ 0, Σ r ≤ patches − 2}. The committed integer removals
    /// then follow with hysteresis.
    mutating func tokenStep(slopes: [Double], costGradient: [Double], price: Double) {
        let l = spec.depth, row = RelaxedField.tokens.rawValue * l
        let patches = Double(spec.numPatches)
        let decisions = gateDecisions()
        var g = [Double](repeating: 0, count: l - 1)
        var saved = 0.0, largest = 0.0
        for b in stride(from: l - 2, through: 0, by: -1) {
            saved += costGradient[row + b + 1]
            let perToken = decisions[2 * b] == 1 ? saved : 0
            g[b] = state.tokenDuals[b] * slopes[b] - price * patches * perToken / denseMACs
            largest = max(largest, abs(g[b]))
        }
        let scale = config.tokenLR * patches / max(1, largest)
        for b in g.indices { state.tokenRemoval[b] -= scale * g[b] }
        Solver.projectCapped(&state.tokenRemoval, cap: patches - 2)
        for b in g.indices where abs(state.tokenRemoval[b] - state.tokenCommitted[b]) > 0.5 + config.hysteresis {
            state.tokenCommitted[b] = (state.tokenRemoval[b] + 0.5).rounded(.down)
        }
    }

    /// Euclidean projection of `r` onto {r ≥ 0, Σ r ≤ cap}: clamp at 0 if that meets the cap,
    /// else subtract the one θ > 0 with Σ max(r − θ, 0) = cap.
    static func projectCapped(_ r: inout [Double], cap: Double) {
        for i in r.indices { r[i] = max(r[i], 0) }
        guard r.reduce(0, +) > cap else { return }
        let sorted = r.sorted(by: >)
        var prefix = 0.0, theta = 0.0
        for (k, v) in sorted.enumerated() {
            prefix += v
            let candidate = (prefix - cap) / Double(k + 1)
            if v - candidate > 0 { theta = candidate }
        }
        // Entries that land exactly on the cap's edge stay inside [0, cap].
        for i in r.indices { r[i] = min(max(r[i] - theta, 0), cap) }
    }
}
