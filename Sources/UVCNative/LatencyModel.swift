/// A measured latency model: what a plan costs in milliseconds on one device at one batch
/// size, priced from a table of the parts a plan can change (`uvc.torch.profile`).
///
/// With A the MHSA part of a block (norm1, attention, projection, residual) measured at kept
/// head counts `heads` × value widths per head `vDims`, M the MLP part (norm2, MLP, residual)
/// at widths `neurons`, and F the fixed part (patch embedding, norms, pooling, head):
///
///     T(plan) = F + Σ_l [ a_l · A(h_l, v_l) + g_l · M(m_l) ]
///
/// A is bilinear between grid points over (heads, value width), M linear over neurons: at a
/// grid point the table's value, in between the straight line between the two neighbours
/// (so never above the larger nor below the smaller). With expected counts and gate
/// probabilities the same formula is the relaxed latency the solver's budget term uses;
/// `expected(_:gradient:)` gives its exact gradient, piecewise constant in each count
/// (what one more head, value dim or neuron costs in ms on that stretch of the grid). Every
/// grid starts at 1 and ends at the dense width, so no plan needs a point the table lacks.
/// A table prices plans that keep every token (token counts are not profiled).
public struct LatencyModel: Sendable {
    public let spec: ViTSpec
    /// Grid points, increasing from 1 to the dense count.
    public let heads: [Double], vDims: [Double], neurons: [Double]
    /// ms of the MHSA part, row-major over (`heads`, `vDims`).
    public let attention: [Double]
    /// ms of the MLP part at each of `neurons`.
    public let mlp: [Double]
    /// ms of everything outside the blocks.
    public let fixed: Double

    /// Names of the table's arrays as the Python API spells them, in argument order.
    public static let argumentNames = ["heads", "v_dims", "neurons", "attention_ms", "mlp_ms", "fixed_ms"]

    /// - Precondition: none; a grid that misses 1 or the dense width, is not strictly
    ///   increasing, or a time that is not finite and positive throws, naming the array and
    ///   the point.
    public init(spec: ViTSpec, heads: [Int], vDims: [Int], neurons: [Int], attention: [Double], mlp: [Double],
                fixed: Double) throws(UVCError) {
        try LatencyModel.checkGrid(heads, "heads", dense: spec.numHeads, what: "kept heads")
        try LatencyModel.checkGrid(vDims, "v_dims", dense: spec.vHeadDim, what: "value dims per head")
        try LatencyModel.checkGrid(neurons, "neurons", dense: spec.mlpHidden, what: "MLP neurons")
        try require(attention.count == heads.count * vDims.count, "attention_ms",
                    "expected \(heads.count) x \(vDims.count) times (heads x v_dims), got \(attention.count)")
        try require(mlp.count == neurons.count, "mlp_ms", "expected \(neurons.count) times (one per neurons point), got \(mlp.count)")
        for (i, t) in attention.enumerated() where !(t.isFinite && t > 0) {
            throw UVCError("attention_ms", "must be finite and positive; at heads=\(heads[i / vDims.count]), "
                           + "v_dims=\(vDims[i % vDims.count]) it is \(t)")
        }
        for (i, t) in mlp.enumerated() where !(t.isFinite && t > 0) {
            throw UVCError("mlp_ms", "must be finite and positive; at neurons=\(neurons[i]) it is \(t)")
        }
        try require(fixed.isFinite && fixed >= 0, "fixed_ms", "must be finite and >= 0, got \(fixed)")
        self.spec = spec
        (self.heads, self.vDims, self.neurons) = (heads.map(Double.init), vDims.map(Double.init), neurons.map(Double.init))
        (self.attention, self.mlp, self.fixed) = (attention, mlp, fixed)
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

    /// A(h, v) and its partial derivatives in h and v.
    public func attentionTime(heads h: Double, vDim v: Double) -> (ms: Double, dHeads: Double, dVDim: Double) {
        let (i, s, wh) = LatencyModel.stretch(heads, h), (j, t, wv) = LatencyModel.stretch(vDims, v)
        let cols = vDims.count
        let i1 = min(i + 1, heads.count - 1), j1 = min(j + 1, cols - 1)
        let a00 = attention[i * cols + j], a10 = attention[i1 * cols + j]
        let a01 = attention[i * cols + j1], a11 = attention[i1 * cols + j1]
        let ms = (1 - s) * (1 - t) * a00 + s * (1 - t) * a10 + (1 - s) * t * a01 + s * t * a11
        let dh = heads.count > 1 && LatencyModel.spans(heads, h) ? ((1 - t) * (a10 - a00) + t * (a11 - a01)) / wh : 0
        let dv = cols > 1 && LatencyModel.spans(vDims, v) ? ((1 - s) * (a01 - a00) + s * (a11 - a10)) / wv : 0
        return (ms, dh, dv)
    }

    /// M(m) and its derivative in m.
    public func mlpTime(neurons m: Double) -> (ms: Double, dNeurons: Double) {
        let (k, u, w) = LatencyModel.stretch(neurons, m)
        guard neurons.count > 1 else { return (mlp[0], 0) }
        return ((1 - u) * mlp[k] + u * mlp[k + 1], LatencyModel.spans(neurons, m) ? (mlp[k + 1] - mlp[k]) / w : 0)
    }

    /// The table's latency of `plan` in ms; per layer the MHSA and MLP parts go to `layers`
    /// (depth × 2, row-major).
    /// - Precondition: `plan` was validated for `spec`; `layers` has 2 × depth entries.
    public func exact(_ plan: ArchPlan, layers: UnsafeMutableBufferPointer<Double>) throws(UVCError) -> Double {
        precondition(layers.count == 2 * plan.layers.count)
        var total = fixed
        for (l, p) in plan.layers.enumerated() {
            try require(p.tokens == spec.numTokens, "plan", "layer \(l) takes \(p.tokens) tokens; a latency table "
                        + "prices plans that keep all \(spec.numTokens) (token counts are not profiled)")
            layers[2 * l] = p.attention ? attentionTime(heads: Double(p.heads), vDim: Double(p.vDim)).ms : 0
            layers[2 * l + 1] = p.mlp ? mlpTime(neurons: Double(p.neurons)).ms : 0
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
    /// gradient (the token row's is 0: tokens are not priced). Counts outside a grid are
    /// clamped to it, where the latency is flat in them (gradient 0): the solver's never are,
    /// USDC's expected head counts can fall below 1.
    /// - Precondition: both buffers have `RelaxedField.allCases.count` × depth entries.
    public func expected(_ inputs: UnsafeBufferPointer<Double>, gradient: UnsafeMutableBufferPointer<Double>) -> Double {
        let depth = spec.depth
        precondition(inputs.count == RelaxedField.allCases.count * depth && gradient.count == inputs.count)
        var total = fixed
        func row(_ f: RelaxedField) -> Int { f.rawValue * depth }
        for l in 0..<depth {
            let a = inputs[row(.attentionGate) + l], g = inputs[row(.mlpGate) + l]
            let attn = attentionTime(heads: inputs[row(.heads) + l], vDim: inputs[row(.vDim) + l])
            let mlp = mlpTime(neurons: inputs[row(.neurons) + l])
            total += a * attn.ms + g * mlp.ms
            gradient[row(.heads) + l] = a * attn.dHeads
            gradient[row(.vDim) + l] = a * attn.dVDim
            gradient[row(.neurons) + l] = g * mlp.dNeurons
            gradient[row(.attentionGate) + l] = attn.ms
            gradient[row(.mlpGate) + l] = mlp.ms
            gradient[row(.tokens) + l] = 0
        }
        return total
    }

    /// The relaxed inputs `expected` accepts: those of `CostModel.validateRelaxed`, every token kept.
    public func validateRelaxed(_ inputs: UnsafeBufferPointer<Double>) throws(UVCError) {
        try CostModel(spec: spec, convention: .uvc).validateRelaxed(inputs)
        let tokens = RelaxedField.tokens.rawValue * spec.depth
        for l in 0..<spec.depth where inputs[tokens + l] != Double(spec.numTokens) {
            throw UVCError("x", "tokens of layer \(l) is \(inputs[tokens + l]); a latency table prices plans that keep "
                           + "all \(spec.numTokens) tokens (token counts are not profiled)")
        }
    }

    /// Widths a plan priced by this table may take: the grid points (`PlanExtraction` snaps to them).
    public var vDimGrid: [Int] { vDims.map { Int($0) } }
    public var neuronGrid: [Int] { neurons.map { Int($0) } }
}
