/// The three kinds of prunable groups, in the row order used by every per-kind array.
public enum GroupKind: Int, CaseIterable, Sendable {
    /// Attention heads of a layer (the input columns of `attn.proj` a head feeds).
    case heads = 0
    /// Value dims: one kept width per LAYER, shared by its kept heads. Per-head widths would
    /// need one matmul per head (or padding that saves no MACs) after export; one width keeps
    /// every exported layer a single rectangular SDPA call.
    case dims = 1
    /// MLP hidden neurons (the input columns of `mlp.fc2`).
    case neurons = 2

    /// Groups of this kind in one layer (for dims: per head).
    public func groupCount(_ spec: ViTSpec) -> Int {
        switch self {
        case .heads: spec.numHeads
        case .dims: spec.vHeadDim
        case .neurons: spec.mlpHidden
        }
    }
}

/// Whether one skip gate serves a whole block or each of its two parts.
public enum GateGranularity: Int, CaseIterable, Sendable {
    /// One gate per block, applied to both its MHSA and MLP branch (UVC).
    case block = 0
    /// Separate gates for the MHSA and the MLP branch.
    case part = 1

    public var name: String { self == .block ? "block" : "part" }
}

/// Hyper-parameters of the UVC primal-dual solver. Defaults are the published DeiT-Tiny run
/// (REFERENCE.md §4) where that run defines them; epochs are fractional training epochs.
///
/// Units. Scores enter normalised per kind (each group's score divided by the mean score of
/// that kind over all layers), so the group duals and z are unitless and one set of defaults
/// fits any model scale, while a layer of weaker groups stays cheaper to prune: `LeastSum` is
/// the removed score mass over that of a layer's worth of average groups, the budget term is
/// z · (R − B) + (ρ/2) · (R − B)² with R the MACs ratio to the dense model (ρ = `budgetDamping`).
public struct SolverConfig: Hashable, Sendable {
    /// Fraction of the dense MACs to keep, in (0, 1].
    public var budget: Double
    /// Which group kinds may be removed (indexed by `GroupKind`).
    public var prune: [Bool]
    /// Whether the tokens each block takes are learned: block l < depth − 1 may drop tokens after
    /// its MHSA (the prefix and the most class-attended tokens stay, the rest fuse into one; see
    /// `ArchPlan.validate`), under the same budget as the groups and gates.
    public var pruneTokens: Bool
    /// Whether blocks (or block parts) may be skipped.
    public var skipBlocks: Bool
    public var gateGranularity: GateGranularity
    public var gateSampler: GateSampler
    /// Forward the hard 0/1 decision, backpropagate the soft sample.
    public var straightThrough: Bool
    /// No architecture update (and gates fully on) while epoch < warmupEpochs.
    public var warmupEpochs: Double
    /// Largest step of the removal counts per optimizer step, as a fraction of the layer's
    /// groups of that kind (indexed by `GroupKind`); reached when ‖g‖∞ ≥ 1.
    public var countLR: [Double]
    /// Fraction of each head's query/key dims every running MHSA keeps, in (0, 1]: the search
    /// prices (and the plan exports) `keptQKDim(spec)` of them from the start; which ones is the
    /// adapter's choice (the highest-scoring per head), fixed for the search. 1: all, as UVC.
    public var qkKeep: Double
    /// Largest step of a block's token removal per optimizer step, as a fraction of the patches;
    /// reached when ‖g‖∞ ≥ 1.
    public var tokenLR: Double
    /// ρ of the augmented-Lagrangian term (ρ/2)·(R − B)² of the budget (R, B: MACs ratios):
    /// every primal variable (counts, token removals, gate logits) sees the one price
    /// max(0, z + ρ·(R − B)) (see `Solver.budgetPrice`).
    public var budgetDamping: Double
    /// A committed integer count changes only once the continuous count is more than
    /// 1/2 + hysteresis away from it, so a marginal group does not flip at every step.
    public var hysteresis: Double
    public var gateLR: Double
    /// Weight of the budget term in the gate-logit gradient.
    public var gatingWeight: Double
    /// Optimizer steps whose gate gradients are averaged into one gate update.
    public var gatingInterval: Int
    public var gateMomentum: Double
    /// Initial log-odds of running; 2 is UVC's initial logit pair (−1, 1).
    public var gateInit: Double
    public var zLR: Double
    /// Epochs at which the z learning rate is multiplied by `zLRGamma`.
    public var zLRSchedule: [Double]
    public var zLRGamma: Double
    /// Bound on |R − B| in one step of z.
    public var zGradClip: Double
    public var zInit: Double
    /// Learning rate of the group duals.
    public var dualLR: Double
    public var dualInit: Double
    /// Gumbel / sigmoid temperature at the end of warm-up, multiplied by `tauDecay` per
    /// epoch after it, never below `tauMin`.
    public var tau: Double
    public var tauDecay: Double
    public var tauMin: Double
    /// Soft-L0 ε at the end of warm-up, multiplied by `epsDecay` per epoch after it.
    public var eps: Double
    public var epsDecay: Double

    public init(budget: Double = 0.5, prune: [Bool] = [true, true, true], pruneTokens: Bool = false,
                skipBlocks: Bool = true, gateGranularity: GateGranularity = .block, gateSampler: GateSampler = .gumbel,
                straightThrough: Bool = true, warmupEpochs: Double = 5, countLR: [Double] = [0.02, 0.02, 0.02],
                tokenLR: Double = 0.02, budgetDamping: Double = 10,
                hysteresis: Double = 0.3, gateLR: Double = 0.1, gatingWeight: Double = 5e-4,
                gatingInterval: Int = 50, gateMomentum: Double = 0.9, gateInit: Double = 2,
                zLR: Double = 1, zLRSchedule: [Double] = [1, 5, 9, 13, 17], zLRGamma: Double = 1.5,
                zGradClip: Double = 0.5, zInit: Double = 0, dualLR: Double = 1e-4, dualInit: Double = 1,
                tau: Double = 0.5, tauDecay: Double = 1, tauMin: Double = 0.05,
                eps: Double = 0.1, epsDecay: Double = 0.92, qkKeep: Double = 1) throws(UVCError) {
        self.budget = budget
        self.qkKeep = qkKeep
        self.prune = prune
        self.pruneTokens = pruneTokens
        self.skipBlocks = skipBlocks
        self.gateGranularity = gateGranularity
        self.gateSampler = gateSampler
        self.straightThrough = straightThrough
        self.warmupEpochs = warmupEpochs
        self.countLR = countLR
        self.tokenLR = tokenLR
        self.budgetDamping = budgetDamping
        self.hysteresis = hysteresis
        self.gateLR = gateLR
        self.gatingWeight = gatingWeight
        self.gatingInterval = gatingInterval
        self.gateMomentum = gateMomentum
        self.gateInit = gateInit
        self.zLR = zLR
        self.zLRSchedule = zLRSchedule
        self.zLRGamma = zLRGamma
        self.zGradClip = zGradClip
        self.zInit = zInit
        self.dualLR = dualLR
        self.dualInit = dualInit
        self.tau = tau
        self.tauDecay = tauDecay
        self.tauMin = tauMin
        self.eps = eps
        self.epsDecay = epsDecay
        try validate()
    }

    /// Fields of the flat float64 encoding, in order, with the names the Python API uses.
    public enum Field: Int, CaseIterable, Sendable {
        case budget, pruneHeads, pruneDims, pruneNeurons, skipBlocks, gateGranularity, gateSampler,
             straightThrough, warmupEpochs, lrHeads, lrDims, lrNeurons, hysteresis, gateLR, gatingWeight,
             gatingInterval, gateMomentum, gateInit, zLR, zLRGamma, zGradClip, zInit, dualLR, dualInit,
             tau, tauDecay, tauMin, eps, epsDecay, pruneTokens, lrTokens, budgetDamping, qkKeep

        /// What the field holds: a switch, one of `choices` (by index), an integer or a real.
        public var kind: String {
            switch self {
            case .pruneHeads, .pruneDims, .pruneNeurons, .skipBlocks, .straightThrough, .pruneTokens: "flag"
            case .gateGranularity, .gateSampler: "choice"
            case .gatingInterval: "int"
            default: "real"
            }
        }

        /// The names of a choice field's options, by index.
        public var choices: [String] {
            switch self {
            case .gateGranularity: GateGranularity.allCases.map(\.name)
            case .gateSampler: GateSampler.allCases.map(\.name)
            default: []
            }
        }

        public var name: String {
            switch self {
            case .budget: "budget"
            case .pruneHeads: "prune_heads"
            case .pruneDims: "prune_dims"
            case .pruneNeurons: "prune_neurons"
            case .skipBlocks: "skip_blocks"
            case .gateGranularity: "gate_granularity"
            case .gateSampler: "gate_sampler"
            case .straightThrough: "straight_through"
            case .warmupEpochs: "warmup_epochs"
            case .lrHeads, .lrDims, .lrNeurons: "lr_counts"
            case .hysteresis: "hysteresis"
            case .gateLR: "gate_lr"
            case .gatingWeight: "gating_weight"
            case .gatingInterval: "gating_interval"
            case .gateMomentum: "gate_momentum"
            case .gateInit: "gate_init"
            case .zLR: "z_lr"
            case .zLRGamma: "zlr_gamma"
            case .zGradClip: "z_grad_clip"
            case .zInit: "z_init"
            case .dualLR: "dual_lr"
            case .dualInit: "dual_init"
            case .tau: "tau"
            case .tauDecay: "tau_decay"
            case .tauMin: "tau_min"
            case .eps: "eps"
            case .epsDecay: "eps_decay"
            case .pruneTokens: "prune_tokens"
            case .lrTokens: "lr_tokens"
            case .budgetDamping: "budget_damping"
            case .qkKeep: "qk_keep"
            }
        }
    }

    /// The flat encoding, in `Field` order (the z learning-rate schedule is separate).
    public var encoded: [Double] {
        Field.allCases.map { f in
            switch f {
            case .budget: budget
            case .pruneHeads, .pruneDims, .pruneNeurons: prune[f.rawValue - Field.pruneHeads.rawValue] ? 1 : 0
            case .skipBlocks: skipBlocks ? 1 : 0
            case .gateGranularity: Double(gateGranularity.rawValue)
            case .gateSampler: Double(gateSampler.rawValue)
            case .straightThrough: straightThrough ? 1 : 0
            case .warmupEpochs: warmupEpochs
            case .lrHeads, .lrDims, .lrNeurons: countLR[f.rawValue - Field.lrHeads.rawValue]
            case .hysteresis: hysteresis
            case .gateLR: gateLR
            case .gatingWeight: gatingWeight
            case .gatingInterval: Double(gatingInterval)
            case .gateMomentum: gateMomentum
            case .gateInit: gateInit
            case .zLR: zLR
            case .zLRGamma: zLRGamma
            case .zGradClip: zGradClip
            case .zInit: zInit
            case .dualLR: dualLR
            case .dualInit: dualInit
            case .tau: tau
            case .tauDecay: tauDecay
            case .tauMin: tauMin
            case .eps: eps
            case .epsDecay: epsDecay
            case .pruneTokens: pruneTokens ? 1 : 0
            case .lrTokens: tokenLR
            case .budgetDamping: budgetDamping
            case .qkKeep: qkKeep
            }
        }
    }

    /// Decodes `Field.allCases.count` doubles plus the z learning-rate schedule.
    public init(encoded e: UnsafeBufferPointer<Double>, schedule: UnsafeBufferPointer<Double>) throws(UVCError) {
        try require(e.count == Field.allCases.count, "config",
                    "expected \(Field.allCases.count) values, got \(e.count)")
        func flag(_ f: Field) throws(UVCError) -> Bool {
            try require(e[f.rawValue] == 0 || e[f.rawValue] == 1, f.name, "must be 0 or 1, got \(e[f.rawValue])")
            return e[f.rawValue] == 1
        }
        func choice<T: RawRepresentable & CaseIterable>(_ f: Field, _: T.Type) throws(UVCError) -> T where T.RawValue == Int {
            let v = e[f.rawValue]
            let r = v.isFinite && v == v.rounded() && abs(v) < 1e6 ? T(rawValue: Int(v)) : nil
            guard let r else { throw UVCError(f.name, "must be one of 0...\(T.allCases.count - 1), got \(v)") }
            return r
        }
        let interval = e[Field.gatingInterval.rawValue]
        try require(interval.isFinite && interval == interval.rounded() && interval >= 1 && interval <= 1e9,
                    "gating_interval", "must be an integer >= 1, got \(interval)")
        try self.init(
            budget: e[Field.budget.rawValue],
            prune: [try flag(.pruneHeads), try flag(.pruneDims), try flag(.pruneNeurons)],
            pruneTokens: try flag(.pruneTokens),
            skipBlocks: try flag(.skipBlocks),
            gateGranularity: try choice(.gateGranularity, GateGranularity.self),
            gateSampler: try choice(.gateSampler, GateSampler.self),
            straightThrough: try flag(.straightThrough),
            warmupEpochs: e[Field.warmupEpochs.rawValue],
            countLR: [e[Field.lrHeads.rawValue], e[Field.lrDims.rawValue], e[Field.lrNeurons.rawValue]],
            tokenLR: e[Field.lrTokens.rawValue], budgetDamping: e[Field.budgetDamping.rawValue],
            hysteresis: e[Field.hysteresis.rawValue], gateLR: e[Field.gateLR.rawValue],
            gatingWeight: e[Field.gatingWeight.rawValue], gatingInterval: Int(interval),
            gateMomentum: e[Field.gateMomentum.rawValue], gateInit: e[Field.gateInit.rawValue],
            zLR: e[Field.zLR.rawValue], zLRSchedule: Array(schedule), zLRGamma: e[Field.zLRGamma.rawValue],
            zGradClip: e[Field.zGradClip.rawValue], zInit: e[Field.zInit.rawValue],
            dualLR: e[Field.dualLR.rawValue], dualInit: e[Field.dualInit.rawValue],
            tau: e[Field.tau.rawValue], tauDecay: e[Field.tauDecay.rawValue], tauMin: e[Field.tauMin.rawValue],
            eps: e[Field.eps.rawValue], epsDecay: e[Field.epsDecay.rawValue], qkKeep: e[Field.qkKeep.rawValue])
    }

    func validate() throws(UVCError) {
        try require(budget.isFinite && budget > 0 && budget <= 1, "budget",
                    "must be a fraction of the dense MACs in (0, 1], got \(budget)")
        try require(prune.count == GroupKind.allCases.count, "prune", "expected 3 switches, got \(prune.count)")
        try require(countLR.count == GroupKind.allCases.count, "lr_counts", "expected 3 values, got \(countLR.count)")
        for v in countLR {
            try require(v.isFinite && v >= 0 && v <= 1, "lr_counts",
                        "must lie in [0, 1] (a fraction of the groups per step), got \(v)")
        }
        try require(tokenLR.isFinite && tokenLR >= 0 && tokenLR <= 1, "lr_tokens",
                    "must lie in [0, 1] (a fraction of the patches per step), got \(tokenLR)")
        try require(hysteresis.isFinite && hysteresis >= 0 && hysteresis < 0.5, "hysteresis",
                    "must lie in [0, 0.5), got \(hysteresis)")
        try require(gatingInterval >= 1, "gating_interval", "must be >= 1, got \(gatingInterval)")
        try require(gateMomentum.isFinite && gateMomentum >= 0 && gateMomentum < 1, "gate_momentum",
                    "must lie in [0, 1), got \(gateMomentum)")
        try require(gateInit.isFinite && abs(gateInit) <= 50, "gate_init", "must be finite with |value| <= 50, got \(gateInit)")
        try require(zLRGamma.isFinite && zLRGamma > 0, "zlr_gamma", "must be finite and > 0, got \(zLRGamma)")
        try require(zGradClip.isFinite && zGradClip > 0, "z_grad_clip", "must be finite and > 0, got \(zGradClip)")
        try require(zLRSchedule.count <= 1024, "zlr_schedule", "at most 1024 epochs, got \(zLRSchedule.count)")
        for e in zLRSchedule {
            try require(e.isFinite && e >= 0, "zlr_schedule", "epochs must be finite and >= 0, got \(e)")
        }
        // η_z after every schedule epoch must stay finite, or z would overflow to ∞ late in a run.
        let lastRate = zLRSchedule.reduce(zLR) { rate, _ in rate * zLRGamma }
        try require(!zLR.isFinite || lastRate.isFinite, "zlr_gamma",
                    "z_lr · zlr_gamma^\(zLRSchedule.count) (the z learning rate after the last schedule epoch) "
                    + "overflows; got z_lr \(zLR), zlr_gamma \(zLRGamma)")
        for (name, v) in [("warmup_epochs", warmupEpochs), ("gate_lr", gateLR), ("gating_weight", gatingWeight),
                          ("z_lr", zLR), ("z_init", zInit), ("dual_lr", dualLR), ("dual_init", dualInit),
                          ("budget_damping", budgetDamping)] {
            try require(v.isFinite && v >= 0, name, "must be finite and >= 0, got \(v)")
        }
        try require(tau.isFinite && tau > 0, "tau", "must be finite and > 0, got \(tau)")
        try require(tauMin.isFinite && tauMin > 0 && tauMin <= tau, "tau_min", "must lie in (0, tau], got \(tauMin)")
        try require(tauDecay.isFinite && tauDecay > 0 && tauDecay <= 1, "tau_decay", "must lie in (0, 1], got \(tauDecay)")
        try require(eps.isFinite && eps > 0, "eps", "must be finite and > 0, got \(eps)")
        try require(epsDecay.isFinite && epsDecay > 0 && epsDecay <= 1, "eps_decay", "must lie in (0, 1], got \(epsDecay)")
        try require(qkKeep.isFinite && qkKeep > 0 && qkKeep <= 1, "qk_keep",
                    "must be a fraction of each head's query/key dims in (0, 1], got \(qkKeep)")
    }

    /// Query/key dims each kept head keeps: `qkKeep` of `spec.qkHeadDim`, rounded half up, at least 1.
    public func keptQKDim(_ spec: ViTSpec) -> Int {
        max(1, min(spec.qkHeadDim, Int((qkKeep * Double(spec.qkHeadDim) + 0.5).rounded(.down))))
    }

    /// Number of skip gates per layer: 0 when blocks are never skipped.
    public var gatesPerLayer: Int { skipBlocks ? (gateGranularity == .block ? 1 : 2) : 0 }
}
