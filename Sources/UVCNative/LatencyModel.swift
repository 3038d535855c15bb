/// A measured latency model: what a plan costs in milliseconds on one device at one batch
/// size, priced from a table of the parts a plan can change (`uvc.torch.profile`).
///
/// With A the MHSA part of a block (norm1, attention, projection, residual) measured at kept
/// head counts `heads` × value widths per head `vDims` × tokens in `tokens`, D the extra time
/// of a block that drops tokens after its MHSA (ranking attention and fusion) at each of
/// `tokens` in, M the MLP part (norm2, MLP, residual) at widths `neurons` × `tokens`, and F
/// the fixed part (patch embedding, norms, pooling, head):
///
///     T(plan) = F + Σ_l [ a_l · (A(h_l, v_l, n_l) + r_l · D(n_l)) + g_l · M(m_l, n_{l+1}) ]
///
/// with n_l the tokens entering block l (n_{depth} = n_{depth−1}) and r_l = [n_{l+1} < n_l],
/// as in `CostModel`: the MLP runs on the tokens the block keeps. A, M and D are multilinear
/// between grid points: at a grid point the table's value, in between the straight line
/// between neighbours along each count (so never above the largest nor below the smallest
/// corner). With expected counts and gate probabilities the same formula is the relaxed
/// latency the solver's budget term uses; `expected(_:gradient:)` gives its exact gradient,
/// piecewise constant in each count (what one more head, value dim, neuron or token costs in
/// ms on that stretch of the grid), r taken as locally constant. The head, value and neuron
/// grids start at 1 and end at the dense width, so no width needs a point the table lacks;
/// the token grid ends at `spec.numTokens` and a plan with fewer tokens than its first point
/// is refused. A table without a token grid (`tokens` nil: the one point `numTokens`) prices
/// plans that keep every token. D does not depend on how many tokens the block keeps
/// (`uvc.torch.profile` times it dropping half), nor F on the tokens leaving the last block.
public struct LatencyModel: Sendable {
    public let spec: ViTSpec
    /// Grid points, increasing from 1 (`tokens`: from its first point) to the dense count.
    public let heads: [Double], vDims: [Double], neurons: [Double], tokens: [Double]
    /// ms of the MHSA part, row-major over (`heads`, `vDims`, `tokens`).
    public let attention: [Double]
    /// ms of the MLP part, row-major over (`neurons`, `tokens`).
    public let mlp: [Double]
    /// Extra ms of a block that drops tokens, at each of `tokens` in (0 where none can drop).
    public let drop: [Double]
    /// ms of everything outside the blocks.
    public let fixed: Double

    /// Names of the table's arrays as the Python API spells them, in argument order.
    public static let argumentNames = ["heads", "v_dims", "neurons", "tokens", "attention_ms", "mlp_ms", "drop_ms",
                                       "fixed_ms"]

    /// - Precondition: none; a grid that misses 1 or the dense width (a token grid: that ends
    ///   elsewhere than `spec.numTokens`), is not strictly increasing, or a time that is not
    ///   finite and positive (`drop`: non-negative) throws, naming the array and the point.
    ///   `tokens` and `drop` nil: the one token point `spec.numTokens`, dropping costs 0.
    public init(spec: ViTSpec, heads: [Int], vDims: [Int], neurons: [Int], tokens: [Int]? = nil,
                attention: [Double], mlp: [Double], drop: [Double]? = nil, fixed: Double) throws(UVCError) {
        try LatencyModel.checkGrid(heads, "heads", dense: spec.numHeads, what: "kept heads")
        try LatencyModel.checkGrid(vDims, "v_dims", dense: spec.vHeadDim, what: "value dims per head")
        try LatencyModel.checkGrid(neurons, "neurons", dense: spec.mlpHidden, what: "MLP neurons")
        let tokens = tokens ?? [spec.numTokens], drop = drop ?? [Double](repeating: 0, count: tokens.count)
        try require(!tokens.isEmpty, "tokens", "is empty; expected token counts up to \(spec.numTokens)")
        try require(zip(tokens, tokens.dropFirst()).allSatisfy(<), "tokens", "must be strictly increasing, got \(tokens)")
        try require(tokens[0] >= 1, "tokens", "must be at least 1, got \(tokens[0])")
        try require(tokens.last == spec.numTokens, "tokens", "has no point at \(spec.numTokens), the model's tokens "
                    + "(its last is \(tokens[tokens.count - 1])); profile it there")
        let t = tokens.count
        try require(attention.count == heads.count * vDims.count * t, "attention_ms", "expected \(heads.count) x "
                    + "\(vDims.count) x \(t) times (heads x v_dims x tokens), got \(attention.count)")
        try require(mlp.count == neurons.count * t, "mlp_ms",
                    "expected \(neurons.count) x \(t) times (neurons x tokens), got \(mlp.count)")
        try require(drop.count == t, "drop_ms", "expected \(t) times (one per tokens point), got \(drop.count)")
        for (i, x) in attention.enumerated() where !(x.isFinite && x > 0) {
            let (hv, k) = i.quotientAndRemainder(dividingBy: t)
            throw UVCError("attention_ms", "must be finite and positive; at heads=\(heads[hv / vDims.count]), "
                           + "v_dims=\(vDims[hv % vDims.count])\(t > 1 ? ", tokens=\(tokens[k])" : "") it is \(x)")
        }
        for (i, x) in mlp.enumerated() where !(x.isFinite && x > 0) {
            throw UVCError("mlp_ms", "must be finite and positive; at neurons=\(neurons[i / t])"
                           + "\(t > 1 ? ", tokens=\(tokens[i % t])" : "") it is \(x)")
        }
        for (k, x) in drop.enumerated() where !(x.isFinite && x >= 0) {
            throw UVCError("drop_ms", "must be finite and >= 0; at tokens=\(tokens[k]) it is \(x)")
        }
        try require(fixed.isFinite && fixed >= 0, "fixed_ms", "must be finite and >= 0, got \(fixed)")
        self.spec = spec
        (self.heads, self.vDims, self.neurons) = (heads.map(Double.init), vDims.map(Double.init), neurons.map(Double.init))
        self.tokens = tokens.map(Double.init)
        (self.attention, self.mlp, self.drop, self.fixed) = (attention, mlp, drop, fixed)
    }

    private static func checkGrid(_ grid: [Int], _ name: String, dense: Int, what: String) throws(UVCError) {
        try require(!grid.isEmpty, name, "is empty; expected the \(what) from 1 to \(dense)")
        try require(zip(grid, grid.dropFirst()).allSatisfy(<), name, "must be strictly increasing, got \(grid)")
        try require(grid.first == 1, name, "has no point at 1 (its first is \(grid[0])): a plan may keep one of the "
                    + "\(what); profile it there (extrapolating below the grid is refused)")
        try require(grid.last == dense, name, "has no point at \(dense), the dense count of \(what) (its last is "
                    + "\(grid[grid.count - 1])); profile it there (extrapolating above the grid is refused)")
    }

    /// The stretch of `grid` holding `x` (clamped to the grid): its left index and the
    /// fraction of the way to the next point; a one-point grid is its own stretch.
    /// - Complexity: O(log grid.count).
    @inline(__always)
    static func stretch(_ grid: [Double], _ x: Double) -> (index: Int, fraction: Double, width: Double) {
        let n = grid.count
        guard n > 1 else { return (0, 0, 1) }
        let x = min(max(x, grid[0]), grid[n - 1])
        var lo = 0, hi = n - 1  // grid[lo] <= x <= grid[hi]
        while hi - lo > 1 {
            let mid = (lo + hi) / 2
            if grid[mid] <= x { lo = mid } else { hi = mid }
        }
        let width = grid[hi] - grid[lo]
        return (lo, (x - grid[lo]) / width, width)
    }

    /// Whether `x` lies on `grid`'s span; outside it the clamped time is flat (derivative 0).
    @inline(__always)
    static func spans(_ grid: [Double], _ x: Double) -> Bool { x >= grid[0] && x <= grid[grid.count - 1] }

    /// Multilinear interpolation of `values` (row-major over `grids`) at `point`, and its
    /// partial derivatives: Σ over the 2^d corners of the stretch of each corner's value times
    /// Π_d (f_d or 1 − f_d), whose derivative in coordinate d is ±Π_{e≠d}(...) / width_d
    /// (0 where the coordinate is clamped to its grid or the grid has one point).
    /// - Complexity: O(d · 2^d + Σ log grid sizes); d ≤ 3 here.
    static func interpolate(_ values: [Double], _ grids: [[Double]], at point: [Double]) -> (ms: Double, gradient: [Double]) {
        let dims = grids.count
        var low = [Int](repeating: 0, count: dims), high = low, strides = [Int](repeating: 1, count: dims)
        var fraction = [Double](repeating: 0, count: dims), slope = fraction
        for d in stride(from: dims - 2, through: 0, by: -1) { strides[d] = strides[d + 1] * grids[d + 1].count }
        for d in 0..<dims {
            let (i, f, w) = stretch(grids[d], point[d])
            (low[d], high[d], fraction[d]) = (i, min(i + 1, grids[d].count - 1), f)
            slope[d] = grids[d].count > 1 && spans(grids[d], point[d]) ? 1 / w : 0
        }
        var ms = 0.0, gradient = [Double](repeating: 0, count: dims)
        for corner in 0..<(1 << dims) {
            func upper(_ d: Int) -> Bool { corner >> d & 1 == 1 }
            var offset = 0
            for d in 0..<dims { offset += (upper(d) ? high[d] : low[d]) * strides[d] }
            let value = values[offset]
            for d in 0...dims {
                // d == dims: the corner's weight; else its derivative in coordinate d.
                var w = d == dims ? 1.0 : (upper(d) ? slope[d] : -slope[d])
                for e in 0..<dims where e != d { w *= upper(e) ? fraction[e] : 1 - fraction[e] }
                if d == dims { ms += w * value } else { gradient[d] += w * value }
            }
        }
        return (ms, gradient)
    }

    /// A(h, v, n) and its partial derivatives; `tokens` nil: all of the model's.
    public func attentionTime(heads h: Double, vDim v: Double, tokens n: Double? = nil)
        -> (ms: Double, dHeads: Double, dVDim: Double, dTokens: Double) {
        let (ms, g) = LatencyModel.interpolate(attention, [heads, vDims, tokens],
                                               at: [h, v, n ?? Double(spec.numTokens)])
        return (ms, g[0], g[1], g[2])
    }

    /// M(m, n) and its partial derivatives; `tokens` nil: all of the model's.
    public func mlpTime(neurons m: Double, tokens n: Double? = nil) -> (ms: Double, dNeurons: Double, dTokens: Double) {
        let (ms, g) = LatencyModel.interpolate(mlp, [neurons, tokens], at: [m, n ?? Double(spec.numTokens)])
        return (ms, g[0], g[1])
    }

    /// D(n), the extra time of a block that drops tokens with `n` in, and its derivative.
    public func dropTime(tokens n: Double) -> (ms: Double, dTokens: Double) {
        let (ms, g) = LatencyModel.interpolate(drop, [tokens], at: [n])
        return (ms, g[0])
    }

    /// Refuses token counts the token grid does not span, naming the point that is missing.
    private func checkTokens(_ n: Double, _ name: String, layer l: Int) throws(UVCError) {
        guard !LatencyModel.spans(tokens, n) else { return }
        let grid = tokens.map { Int($0) }, count = n == n.rounded() && abs(n) < 1e9 ? "\(Int(n))" : "\(n)"
        throw UVCError(name, "layer \(l) takes \(count) tokens; the latency table's token grid \(grid) "
                       + (tokens.count == 1 ? "prices plans that keep all \(spec.numTokens) (profile token counts "
                          + "with `uvc profile --tokens`)"
                          : "starts at \(grid[0]): profile it at \(count) tokens (extrapolating below the grid "
                          + "is refused)"))
    }

    /// The table's latency of `plan` in ms (every running MHSA at full query/key width, as
    /// profiled); per layer the MHSA (with the drop, if any) and MLP
    /// parts go to `layers` (depth × 2, row-major).
    /// - Precondition: `plan` was validated for `spec`; `layers` has 2 × depth entries.
    public func exact(_ plan: ArchPlan, layers: UnsafeMutableBufferPointer<Double>) throws(UVCError) -> Double {
        precondition(layers.count == 2 * plan.layers.count)
        var total = fixed
        for (l, p) in plan.layers.enumerated() {
            let n = Double(p.tokens), kept = l + 1 < plan.layers.count ? Double(plan.layers[l + 1].tokens) : n
            try checkTokens(n, "plan", layer: l)
            try require(!p.attention || p.qkDim == spec.qkHeadDim, "plan",
                        "layer \(l) keeps \(p.qkDim) of \(spec.qkHeadDim) query/key dims per head; the latency table timed them at full width (spec.qk_head_dim), so it prices no other")
            let drops = p.attention && kept < n
            layers[2 * l] = p.attention ? attentionTime(heads: Double(p.heads), vDim: Double(p.vDim), tokens: n).ms
                + (drops ? dropTime(tokens: n).ms : 0) : 0
            layers[2 * l + 1] = p.mlp ? mlpTime(neurons: Double(p.neurons), tokens: kept).ms : 0
            total += layers[2 * l] + layers[2 * l + 1]
        }
        return total
    }

    /// `exact` without the per-layer parts.
    public func exactTotal(_ plan: ArchPlan) throws(UVCError) -> Double {
        var layers = [Double](repeating: 0, count: 2 * plan.layers.count)
        return try layers.withUnsafeMutableBufferPointer { buffer throws(UVCError) in try exact(plan, layers: buffer) }
    }

    /// The relaxed latency in ms of continuous inputs laid out as `RelaxedField` rows, and its
    /// gradient. `tokens[l + 1]` (for the last block `tokens[l]`) sizes block l's MLP, and
    /// r_l = [tokens[l + 1] < tokens[l]] is locally constant, as in `CostModel.expected`, so the
    /// token row accumulates: ∂T/∂n_l = a_l·(∂A/∂n + r_l·∂D/∂n) + g_{l−1}·∂M_{l−1}/∂n. Counts
    /// outside the width grids are clamped to them, where the latency is flat in them
    /// (gradient 0): the solver's never are, USDC's expected head counts can fall below 1.
    /// - Precondition: `inputs` passed `validateRelaxed`; both buffers have
    ///   `RelaxedField.allCases.count` × depth entries.
    public func expected(_ inputs: UnsafeBufferPointer<Double>, gradient: UnsafeMutableBufferPointer<Double>) -> Double {
        let depth = spec.depth
        precondition(inputs.count == RelaxedField.allCases.count * depth && gradient.count == inputs.count)
        var total = fixed
        func row(_ f: RelaxedField) -> Int { f.rawValue * depth }
        for l in 0..<depth { gradient[row(.tokens) + l] = 0 }
        for l in 0..<depth {
            let a = inputs[row(.attentionGate) + l], g = inputs[row(.mlpGate) + l]
            let out = row(.tokens) + (l + 1 < depth ? l + 1 : l)
            let n = inputs[row(.tokens) + l], kept = inputs[out]
            let attn = attentionTime(heads: inputs[row(.heads) + l], vDim: inputs[row(.vDim) + l], tokens: n)
            let fuse = kept < n ? dropTime(tokens: n) : (ms: 0, dTokens: 0)
            let mlp = mlpTime(neurons: inputs[row(.neurons) + l], tokens: kept)
            total += a * (attn.ms + fuse.ms) + g * mlp.ms
            gradient[row(.heads) + l] = a * attn.dHeads
            gradient[row(.qkDim) + l] = 0
            gradient[row(.vDim) + l] = a * attn.dVDim
            gradient[row(.neurons) + l] = g * mlp.dNeurons
            gradient[row(.attentionGate) + l] = attn.ms + fuse.ms
            gradient[row(.mlpGate) + l] = mlp.ms
            gradient[row(.tokens) + l] += a * (attn.dTokens + fuse.dTokens)
            gradient[out] += g * mlp.dTokens
        }
        return total
    }

    /// The relaxed inputs `expected` accepts: those of `CostModel.validateRelaxed`, with token
    /// counts the token grid spans.
    public func validateRelaxed(_ inputs: UnsafeBufferPointer<Double>) throws(UVCError) {
        try CostModel(spec: spec, convention: .uvc).validateRelaxed(inputs)
        let row = RelaxedField.tokens.rawValue * spec.depth
        for l in 0..<spec.depth { try checkTokens(inputs[row + l], "x", layer: l) }
        let qk = RelaxedField.qkDim.rawValue * spec.depth
        for l in 0..<spec.depth {
            try require(inputs[qk + l] == Double(spec.qkHeadDim), "x",
                        "qk_dim[\(l)] = \(inputs[qk + l]): the latency table timed every head's queries and keys at their full width \(spec.qkHeadDim) (spec.qk_head_dim), so it prices no other")
        }
    }

    /// Widths a plan priced by this table may take: the grid points (`PlanExtraction` snaps to them).
    public var vDimGrid: [Int] { vDims.map { Int($0) } }
    public var neuronGrid: [Int] { neurons.map { Int($0) } }
}
