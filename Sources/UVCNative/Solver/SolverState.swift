/// Everything the solver learns or carries from one step to the next. Restoring it (with the
/// same spec, convention and config) continues a run bit for bit.
///
/// Per-kind arrays are `3 × depth`, row-major, rows indexed by `GroupKind`.
public struct SolverState: Hashable, Sendable {
    /// Continuous removal counts s ∈ [0, groups − 1] (at least one group of each kind stays).
    public var removal: [Double]
    /// Integer removal counts the masks and the plan use: `removal` rounded, with hysteresis.
    public var committed: [Double]
    /// Duals of the group-sparsity terms (y for heads and neurons, p for dims), ≥ 0.
    public var duals: [Double]
    /// Dual of the budget constraint, ≥ 0.
    public var z: Double
    /// Log-odds of running, one per gate (`depth × gatesPerLayer`, layer-major).
    public var logits: [Double]
    /// Momentum buffer of the gate update.
    public var velocity: [Double]
    /// Gate gradients summed since the last gate update, and how many steps they cover.
    public var gradientSum: [Double]
    public var accumulatedSteps: Double
    /// ∂(soft sample)/∂logit of the last `sampleGates` draw, and whether a step has yet to
    /// consume it (the task gradient of a step refers to the draw made before it).
    public var sampleSlope: [Double]
    public var sampleFresh: Double
    /// Where each row's last selection landed (heads: depth, dims: depth × heads, neurons:
    /// depth), three doubles per row: `SelectionHint`'s value (−1 = none), rank and spacing.
    /// Only speed depends on them.
    public var hints: [Double]
    /// Architecture steps taken (steps after warm-up).
    public var searchSteps: Double
    /// The epoch of the last `step` or `sampleGates` call: the clock of the ε and τ schedules
    /// for queries that take no epoch.
    public var epoch: Double
    public var rng: Xoshiro256StarStar
    /// Token pruning (empty without it): per block l < depth − 1, the continuous number of tokens
    /// it removes (≥ 0, summing to at most numPatches − 2), the integer removal the schedule uses
    /// (rounded with hysteresis), and the dual of its LeastSum over class attention.
    public var tokenRemoval: [Double]
    public var tokenCommitted: [Double]
    public var tokenDuals: [Double]

    /// The state before the first step.
    public init(spec: ViTSpec, config: SolverConfig, seed: UInt64) {
        let l = spec.depth, g = l * config.gatesPerLayer
        removal = Array(repeating: 0, count: 3 * l)
        committed = removal
        duals = Array(repeating: config.dualInit, count: 3 * l)
        z = config.zInit
        logits = Array(repeating: config.gateInit, count: g)
        velocity = Array(repeating: 0, count: g)
        gradientSum = velocity
        accumulatedSteps = 0
        sampleSlope = velocity
        sampleFresh = 0
        let none = SelectionHint.none
        hints = Array(repeating: [none.value, none.rank, none.spacing], count: l * (spec.numHeads + 2)).flatMap { $0 }
        searchSteps = 0
        epoch = 0
        rng = Xoshiro256StarStar(seed: seed)
        let blocks = Field.tokenRemoval.count(spec, config)
        tokenRemoval = Array(repeating: 0, count: blocks)
        tokenCommitted = tokenRemoval
        tokenDuals = Array(repeating: config.dualInit, count: blocks)
    }

    /// The selection hint of row `row` (see `hints`).
    func hint(_ row: Int) -> SelectionHint {
        let at = SelectionHint.encodedCount * row
        return SelectionHint(value: hints[at], rank: hints[at + 1], spacing: hints[at + 2])
    }

    mutating func setHint(_ row: Int, _ h: SelectionHint) {
        let at = SelectionHint.encodedCount * row
        (hints[at], hints[at + 1], hints[at + 2]) = (h.value, h.rank, h.spacing)
    }

    /// Fields of the flat float64 encoding, in order.
    public enum Field: Int, CaseIterable, Sendable {
        case removal, committed, duals, z, logits, velocity, gradientSum, accumulatedSteps,
             sampleSlope, sampleFresh, hints, searchSteps, epoch, tokenRemoval, tokenCommitted, tokenDuals

        /// The name the Python API uses.
        public var name: String {
            ["removal", "committed", "duals", "z", "logits", "velocity", "gradient_sum", "accumulated_steps",
             "sample_slope", "sample_fresh", "hints", "search_steps", "epoch", "token_removal", "token_committed",
             "token_duals"][rawValue]
        }

        public func count(_ spec: ViTSpec, _ config: SolverConfig) -> Int {
            let l = spec.depth, g = l * config.gatesPerLayer
            switch self {
            case .removal, .committed, .duals: return 3 * l
            case .z, .accumulatedSteps, .sampleFresh, .searchSteps, .epoch: return 1
            case .logits, .velocity, .gradientSum, .sampleSlope: return g
            case .hints: return SelectionHint.encodedCount * l * (spec.numHeads + 2)
            // The last block never drops tokens.
            case .tokenRemoval, .tokenCommitted, .tokenDuals: return config.pruneTokens ? l - 1 : 0
            }
        }
    }

    public static func encodedCount(_ spec: ViTSpec, _ config: SolverConfig) -> Int {
        Field.allCases.reduce(0) { $0 + $1.count(spec, config) }
    }

    /// Largest |gate logit| a step leaves (and a loaded state may hold).
    public static let logitBound = 50.0
    /// Largest |entry| of the gate gradient sum and momentum.
    public static let gradientBound = 1e300

    /// Words of the random generator's state, stored as int64 bit patterns.
    public static let rngWordCount = 4

    /// Writes the state into `doubles` (`encodedCount` values) and `words` (4 values).
    public func encode(into doubles: UnsafeMutableBufferPointer<Double>, words: UnsafeMutableBufferPointer<Int64>) {
        var at = 0
        func put(_ values: [Double]) {
            for v in values { doubles[at] = v; at += 1 }
        }
        put(removal); put(committed); put(duals); put([z]); put(logits); put(velocity); put(gradientSum)
        put([accumulatedSteps]); put(sampleSlope); put([sampleFresh]); put(hints); put([searchSteps]); put([epoch])
        put(tokenRemoval); put(tokenCommitted); put(tokenDuals)
        let w = rng.words
        (words[0], words[1], words[2], words[3]) =
            (Int64(bitPattern: w.0), Int64(bitPattern: w.1), Int64(bitPattern: w.2), Int64(bitPattern: w.3))
    }

    /// Decodes and checks a saved state: sizes, finiteness, bounds, integer counts.
    public init(encoded doubles: UnsafeBufferPointer<Double>, words: UnsafeBufferPointer<Int64>,
                spec: ViTSpec, config: SolverConfig) throws(UVCError) {
        let expected = SolverState.encodedCount(spec, config)
        try require(doubles.count == expected, "state",
                    "expected \(expected) values for this spec and config, got \(doubles.count)")
        try require(words.count == SolverState.rngWordCount, "state.rng",
                    "expected \(SolverState.rngWordCount) words, got \(words.count)")
        var at = 0
        func take(_ f: Field) -> [Double] {
            let n = f.count(spec, config)
            defer { at += n }
            return Array(doubles[at..<(at + n)])
        }
        removal = take(.removal)
        committed = take(.committed)
        duals = take(.duals)
        z = take(.z)[0]
        logits = take(.logits)
        velocity = take(.velocity)
        gradientSum = take(.gradientSum)
        accumulatedSteps = take(.accumulatedSteps)[0]
        sampleSlope = take(.sampleSlope)
        sampleFresh = take(.sampleFresh)[0]
        hints = take(.hints)
        searchSteps = take(.searchSteps)[0]
        epoch = take(.epoch)[0]
        tokenRemoval = take(.tokenRemoval)
        tokenCommitted = take(.tokenCommitted)
        tokenDuals = take(.tokenDuals)
        rng = try Xoshiro256StarStar(words: (UInt64(bitPattern: words[0]), UInt64(bitPattern: words[1]),
                                            UInt64(bitPattern: words[2]), UInt64(bitPattern: words[3])))
        try validate(spec: spec, config: config)
    }

    func validate(spec: ViTSpec, config: SolverConfig) throws(UVCError) {
        let l = spec.depth
        for (field, count) in [(Field.removal, removal.count), (.committed, committed.count), (.duals, duals.count),
                               (.logits, logits.count), (.velocity, velocity.count), (.gradientSum, gradientSum.count),
                               (.sampleSlope, sampleSlope.count), (.hints, hints.count),
                               (.tokenRemoval, tokenRemoval.count), (.tokenCommitted, tokenCommitted.count),
                               (.tokenDuals, tokenDuals.count)] {
            try require(count == field.count(spec, config), "state",
                        "field \(field) has \(count) values, this spec and config need \(field.count(spec, config))")
        }
        for kind in GroupKind.allCases {
            let upper = Double(kind.groupCount(spec) - 1)
            for i in (kind.rawValue * l)..<((kind.rawValue + 1) * l) {
                try require(removal[i].isFinite && removal[i] >= 0 && removal[i] <= upper, "state.removal",
                            "entry \(i) = \(removal[i]), expected a value in [0, \(upper)]")
                try require(committed[i] >= 0 && committed[i] <= upper && committed[i] == committed[i].rounded(),
                            "state.committed", "entry \(i) = \(committed[i]), expected an integer in [0, \(upper)]")
                try require(duals[i].isFinite && duals[i] >= 0, "state.duals",
                            "entry \(i) = \(duals[i]), expected a finite value >= 0")
            }
        }
        let cap = Double(spec.numPatches - 2)
        for i in tokenRemoval.indices {
            try require(tokenRemoval[i].isFinite && tokenRemoval[i] >= 0 && tokenRemoval[i] <= cap, "state.token_removal",
                        "entry \(i) = \(tokenRemoval[i]), expected a value in [0, \(cap)]")
            try require(tokenCommitted[i] >= 0 && tokenCommitted[i] <= cap && tokenCommitted[i] == tokenCommitted[i].rounded(),
                        "state.token_committed", "entry \(i) = \(tokenCommitted[i]), expected an integer in [0, \(cap)]")
            try require(tokenDuals[i].isFinite && tokenDuals[i] >= 0, "state.token_duals",
                        "entry \(i) = \(tokenDuals[i]), expected a finite value >= 0")
        }
        try require(z.isFinite && z >= 0, "state.z", "expected a finite value >= 0, got \(z)")
        // The bounds a step keeps (`SolverGates`): a loaded state past them could overflow a gate.
        for (name, values, bound) in [("state.logits", logits, SolverState.logitBound),
                                       ("state.velocity", velocity, SolverState.gradientBound),
                                       ("state.gradient_sum", gradientSum, SolverState.gradientBound),
                                       ("state.sample_slope", sampleSlope, Double.greatestFiniteMagnitude)] {
            if let v = values.first(where: { !(abs($0) <= bound) }) {
                throw UVCError(name, "entries must be finite with |value| <= \(bound), got \(v)")
            }
        }
        try require(accumulatedSteps >= 0 && accumulatedSteps < Double(config.gatingInterval)
                    && accumulatedSteps == accumulatedSteps.rounded(), "state.accumulated_steps",
                    "expected an integer in [0, \(config.gatingInterval)), got \(accumulatedSteps)")
        try require(sampleFresh == 0 || sampleFresh == 1, "state.sample_fresh", "must be 0 or 1, got \(sampleFresh)")
        for at in stride(from: 0, to: hints.count, by: SelectionHint.encodedCount) {
            // Int(rank) rather than `rounded()`: a libm call per row on baseline x86-64.
            let (value, rank, spacing) = (hints[at], hints[at + 1], hints[at + 2])
            if !(value == -1 || (value.isFinite && value >= 0)) || !(rank >= 0 && rank < 0x1p53 && Double(Int(rank)) == rank)
                || !(spacing.isFinite && spacing >= 0) {
                throw UVCError("state.hints", "row \(at / SelectionHint.encodedCount) is (\(value), \(rank), \(spacing)); "
                               + "expected a score >= 0 or -1, an integer rank >= 0 and a finite spacing >= 0")
            }
        }
        try require(epoch.isFinite && epoch >= 0, "state.epoch", "expected a finite value >= 0, got \(epoch)")
        try require(searchSteps >= 0 && searchSteps == searchSteps.rounded() && searchSteps < 0x1p53,
                    "state.search_steps", "expected a non-negative integer, got \(searchSteps)")
    }
}
