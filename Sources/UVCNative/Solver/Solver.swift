/// Per-group arrays of one model, borrowed for one call: heads `depth × numHeads`, value
/// dims `depth × numHeads × vHeadDim`, neurons `depth × mlpHidden`, all row-major.
public struct GroupArrays<Buffer> {
    public let heads: Buffer
    public let dims: Buffer
    public let neurons: Buffer

    public init(heads: Buffer, dims: Buffer, neurons: Buffer) {
        self.heads = heads
        self.dims = dims
        self.neurons = neurons
    }
}

/// Group scores (squared norms of the columns each group feeds into `attn.proj` / `mlp.fc2`).
public typealias GroupScores = GroupArrays<UnsafeBufferPointer<Double>>
/// Per-group outputs: proximal factors or keep masks.
public typealias GroupOutputs = GroupArrays<UnsafeMutableBufferPointer<Double>>

extension ViTSpec {
    /// Sizes of the head, dim and neuron arrays.
    var groupArraySizes: (heads: Int, dims: Int, neurons: Int) {
        (depth * numHeads, depth * numHeads * vHeadDim, depth * mlpHidden)
    }
}

extension GroupArrays where Buffer == UnsafeBufferPointer<Double> {
    /// Checks sizes and values: every score finite and ≥ 0. `names` are the arguments' names.
    public func validate(for spec: ViTSpec, names: (String, String, String) = GroupArrays.scoreNames) throws(UVCError) {
        try validateSizes(for: spec, names: names)
        for (buffer, name) in [(heads, names.0), (dims, names.1), (neurons, names.2)]
        where !Kernels.allFiniteNonNegative(buffer) {
            try GroupArrays.reject(buffer, name)
        }
    }

    /// `validate`, copying the scores into `copy` in the same pass; returns each kind's sum.
    public func validate(for spec: ViTSpec, copyingInto copy: GroupOutputs) throws(UVCError) -> (heads: Double, dims: Double, neurons: Double) {
        try validateSizes(for: spec, names: GroupArrays.scoreNames)
        try copy.validate(for: spec, names: ("last_head", "last_dim", "last_neuron"))
        func pass(_ buffer: Buffer, _ target: UnsafeMutableBufferPointer<Double>, _ name: String) throws(UVCError) -> Double {
            let (ok, sum) = Kernels.checkedCopy(buffer, into: target)
            if !ok { try GroupArrays.reject(buffer, name) }
            // Each kind is normalised by its mean: a sum past the largest double would make it ∞/∞.
            try require(sum.isFinite, name, "scores must sum to a finite float64; their sum overflows (largest "
                        + "entry \(buffer.max() ?? 0)): divide them by a common factor")
            return sum
        }
        let names = GroupArrays.scoreNames
        return (try pass(heads, copy.heads, names.0), try pass(dims, copy.dims, names.1),
                try pass(neurons, copy.neurons, names.2))
    }

    public static var scoreNames: (String, String, String) { ("head_scores", "dim_scores", "neuron_scores") }

    private func validateSizes(for spec: ViTSpec, names: (String, String, String)) throws(UVCError) {
        let n = spec.groupArraySizes
        try require(heads.count == n.heads, names.0,
                    "expected shape (\(spec.depth), \(spec.numHeads)), got \(heads.count) values")
        try require(dims.count == n.dims, names.1,
                    "expected shape (\(spec.depth), \(spec.numHeads), \(spec.vHeadDim)), got \(dims.count) values")
        try require(neurons.count == n.neurons, names.2,
                    "expected shape (\(spec.depth), \(spec.mlpHidden)), got \(neurons.count) values")
    }

    private static func reject(_ buffer: Buffer, _ name: String) throws(UVCError) {
        let i = buffer.firstIndex { !($0.isFinite && $0 >= 0) } ?? 0
        throw UVCError(name, "scores must be finite and >= 0; entry \(i) is \(buffer[i])")
    }
}

extension GroupArrays where Buffer == UnsafeMutableBufferPointer<Double> {
    public func validate(for spec: ViTSpec, names: (String, String, String)) throws(UVCError) {
        let n = spec.groupArraySizes
        try require(heads.count == n.heads, names.0, "expected \(n.heads) values, got \(heads.count)")
        try require(dims.count == n.dims, names.1, "expected \(n.dims) values, got \(dims.count)")
        try require(neurons.count == n.neurons, names.2, "expected \(n.neurons) values, got \(neurons.count)")
    }

    func fill(_ value: Double) {
        heads.update(repeating: value)
        dims.update(repeating: value)
        neurons.update(repeating: value)
    }
}

/// The UVC primal-dual solver (REFERENCE.md §2–4) for one `ViTSpec`, with the original's
/// defects fixed (§6). A value type: copying it forks the run; `state` is everything that
/// changes, and restoring it continues the run exactly.
///
/// One `step` per optimizer step: proximal shrink of the groups selected for removal, a
/// primal step on the removal counts (and, with `config.pruneTokens`, on each block's token
/// removal) and the gate logits, dual ascent on the group (and token) duals and on z. Costs are
/// MACs under `convention`, or with a `latency` model milliseconds (the names keep saying MACs);
/// the budget is `config.budget × denseMACs`.
public struct Solver: Sendable {
    public let spec: ViTSpec
    public let config: SolverConfig
    public let cost: CostModel
    /// When set, the budget is in ms of this table instead of MACs.
    public let latency: LatencyModel?
    /// Cost of the dense model: MACs, or ms with `latency`.
    public let denseMACs: Double
    public var state: SolverState

    /// A fresh solver; `seed` seeds the gate sampler's generator (the only random source).
    public init(spec: ViTSpec, convention: CostConvention, config: SolverConfig, seed: UInt64,
                latency: LatencyModel? = nil) throws(UVCError) {
        try Solver.checkSize(spec)  // before the state's buffers are allocated
        try self.init(spec: spec, convention: convention, config: config,
                      state: SolverState(spec: spec, config: config, seed: seed), latency: latency)
    }

    /// A solver resumed from a saved `state` (checked against spec and config).
    public init(spec: ViTSpec, convention: CostConvention, config: SolverConfig, state: SolverState,
                latency: LatencyModel? = nil) throws(UVCError) {
        if let latency {
            try require(latency.spec == spec, "latency", "the table was measured for another model shape "
                        + "(\(latency.spec)), not this spec (\(spec))")
            // Token removal goes down to prefix + 2 tokens; the table must price every count on the way.
            let fewest = spec.prefixTokens + 2, first = Int(latency.tokens[0])
            try require(!config.pruneTokens || first <= fewest, "prune_tokens", latency.tokens.count == 1
                        ? "the latency table prices plans that keep every token (its token grid is \(first)); profile "
                          + "token counts (`uvc profile --tokens`), turn prune_tokens off or budget MACs"
                        : "the latency table's token grid starts at \(first), above the \(fewest) tokens a block may "
                          + "keep; profile from \(fewest) tokens (`uvc profile --tokens`)")
            try require(config.keptQKDim(spec) == spec.qkHeadDim, "qk_keep",
                        "the latency table timed every head's queries and keys at full width; with a latency "
                        + "budget qk_keep must keep all \(spec.qkHeadDim), got \(config.qkKeep)")
        }
        try require(!spec.qkNorm || config.keptQKDim(spec) == spec.qkHeadDim, "qk_keep",
                    "the model normalises each head's queries and keys over all their dims (qk_norm); "
                    + "qk_keep must keep all \(spec.qkHeadDim), got \(config.qkKeep)")
        if config.pruneTokens {
            try require(spec.depth >= 2 && spec.numPatches >= 3, "prune_tokens",
                        "needs depth >= 2 and at least 3 patches (a block drops tokens down to one kept patch and "
                        + "the fused token); got depth \(spec.depth), \(spec.numPatches) patches")
        }
        try Solver.checkSize(spec)
        self.spec = spec
        self.config = config
        self.cost = CostModel(spec: spec, convention: convention)
        self.latency = latency
        self.denseMACs = try latency?.exactTotal(.dense(spec)) ?? cost.exactTotal(.dense(spec))
        self.state = state
        try state.validate(spec: spec, config: config)
        let floor = smallestReachableMACs
        try require(budgetMACs >= floor * (1 + 1e-12), "budget",
                    "\(budgetMACs) \(unit) (\(config.budget) of \(denseMACs)) is below the smallest cost the enabled "
                    + "options can reach, \(floor) \(unit) (\(floor / denseMACs) of dense)")
    }

    public var budgetMACs: Double { config.budget * denseMACs }

    /// What the costs count: "MACs", or "ms" with a latency table.
    public var unit: String { latency == nil ? "MACs" : "ms" }

    /// The exact cost of `plan`: MACs, or the table's ms.
    /// - Precondition: `plan` was validated for `spec` (with a latency table: its tokens on the
    ///   table's token grid).
    func exactCost(_ plan: ArchPlan) -> Double {
        guard let latency else { return cost.exactTotal(plan) }
        // The solver's token schedules never go below prefix + 2, which the table spans (checked at init).
        return (try? latency.exactTotal(plan)) ?? .nan
    }

    /// The most groups (heads, value dims and neurons over all layers) a solver takes: far above
    /// any ViT (ViT-H/14: about 0.2 M), low enough that its buffers always fit in memory.
    public static let maxGroups = 1 << 24

    private static func checkSize(_ spec: ViTSpec) throws(UVCError) {
        let n = spec.groupArraySizes
        try require(n.heads + n.dims + n.neurons <= maxGroups, "spec",
                    "has \(n.heads + n.dims + n.neurons) prunable groups (heads + value dims + neurons over all layers); "
                    + "the solver handles at most \(maxGroups)")
    }

    /// MACs of the cheapest architecture the options allow: one head, one value dim and one
    /// neuron per layer for the kinds being pruned, every part skipped if gates are on, else,
    /// with token pruning, block 0 dropping all but the prefix, one patch and the fused token.
    public var smallestReachableMACs: Double {
        let l = spec.depth
        var x = [Double](repeating: 0, count: RelaxedField.allCases.count * l)
        let gate: Double = config.skipBlocks ? 0 : 1
        for i in 0..<l {
            x[RelaxedField.heads.rawValue * l + i] = config.prune[0] ? 1 : Double(spec.numHeads)
            x[RelaxedField.qkDim.rawValue * l + i] = Double(config.keptQKDim(spec))
            x[RelaxedField.vDim.rawValue * l + i] = config.prune[1] ? 1 : Double(spec.vHeadDim)
            x[RelaxedField.neurons.rawValue * l + i] = config.prune[2] ? 1 : Double(spec.mlpHidden)
            x[RelaxedField.attentionGate.rawValue * l + i] = gate
            x[RelaxedField.mlpGate.rawValue * l + i] = gate
            let fewest = config.pruneTokens && !config.skipBlocks && i > 0
            x[RelaxedField.tokens.rawValue * l + i] = Double(fewest ? spec.prefixTokens + 2 : spec.numTokens)
        }
        return evaluate(x).macs
    }

    /// The cost model on a relaxed input (see `RelaxedField`), with its gradient.
    func evaluate(_ x: [Double]) -> (macs: Double, gradient: [Double]) {
        var gradient = [Double](repeating: 0, count: x.count)
        let macs = x.withUnsafeBufferPointer { xb in
            gradient.withUnsafeMutableBufferPointer { latency?.expected(xb, gradient: $0) ?? cost.expected(xb, gradient: $0) }
        }
        return (macs, gradient)
    }

    /// Whether `state` passes the checks a state given to the core must pass.
    public var stateIsValid: Bool { (try? state.validate(spec: spec, config: config)) != nil }

    /// Groups of `kind` per layer, as a Double.
    func groups(_ kind: GroupKind) -> Double { Double(kind.groupCount(spec)) }
}
