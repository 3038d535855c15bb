/// A solver together with the scores of its last step: what one `uvc.Solver` holds between
/// calls. `masks` and `plan` read the last scores; a step checks and copies its scores into a
/// spare set, which becomes the last scores only when the step succeeds, so a refused call
/// changes nothing. A reference type: it owns those buffers.
public final class SolverSession {
    public private(set) var solver: Solver
    private let storage: UnsafeMutableBufferPointer<Double>
    private var last: GroupOutputs
    private var spare: GroupOutputs

    /// Format version of `save()`'s payload (`Archive.Tag.solver`).
    public static let archiveVersion: UInt32 = 1

    public init(_ solver: Solver) {
        self.solver = solver
        let n = solver.spec.groupArraySizes, total = n.heads + n.dims + n.neurons
        let storage = UnsafeMutableBufferPointer<Double>.allocate(capacity: 2 * total)
        storage.initialize(repeating: 0)
        self.storage = storage
        func views(_ at: Int) -> GroupOutputs {
            GroupOutputs(heads: .init(rebasing: storage[at..<(at + n.heads)]),
                         dims: .init(rebasing: storage[(at + n.heads)..<(at + n.heads + n.dims)]),
                         neurons: .init(rebasing: storage[(at + n.heads + n.dims)..<(at + total)]))
        }
        last = views(0)
        spare = views(total)
    }

    deinit { storage.deallocate() }

    /// `Solver.step`, keeping this step's scores as the last ones if it succeeds.
    public func step(scores: GroupScores, gateGradient: UnsafeBufferPointer<Double>?,
                     tokenScores: UnsafeBufferPointer<Double>?, learningRate: Double, epoch: Double,
                     factors: GroupOutputs) throws(UVCError) {
        try solver.step(scores: scores, gateGradient: gateGradient, tokenScores: tokenScores,
                        learningRate: learningRate, epoch: epoch, factors: factors, scoresCopy: spare)
        swap(&last, &spare)
    }

    /// `Solver.sampleGates`; with a latency table a part the plan's budget trim skips under the
    /// last scores (one its gate would run) draws 0, so training runs what the export will.
    public func sampleGates(epoch: Double, into gates: UnsafeMutableBufferPointer<Double>) throws(UVCError) {
        try solver.sampleGates(epoch: epoch, into: gates)
        guard solver.latency != nil else { return }
        let (gated, planned) = (solver.gateDecisions(), solver.planDecisions(scores: lastScores))
        for i in gates.indices where gated[i] == 1 && planned[i] == 0 { gates[i] = 0 }
    }

    /// Keep masks under the last scores (see `Solver.masks`).
    public func masks(into out: GroupOutputs) throws(UVCError) {
        try solver.masks(scores: lastScores, into: out)
    }

    /// The export plan under the last scores, its rows `LayerPlan.encode`d into `counts`
    /// (`depth × LayerPlan.encodedCount`); returns its exact MACs. `fit`: see `Solver.plan`.
    public func plan(roundTo: Int, fit: Bool = false, counts: UnsafeMutableBufferPointer<Int64>,
                     masks: GroupOutputs) throws(UVCError) -> Double {
        let w = LayerPlan.encodedCount
        try require(counts.count == solver.spec.depth * w, "counts_out", "expected \(solver.spec.depth * w) values")
        let (plan, macs) = try solver.plan(scores: lastScores, roundTo: roundTo, fit: fit, into: masks)
        for (l, p) in plan.layers.enumerated() {
            p.encode(into: UnsafeMutableBufferPointer(rebasing: counts[(l * w)..<((l + 1) * w)]))
        }
        return macs
    }

    private var lastScores: GroupScores {
        GroupScores(heads: UnsafeBufferPointer(last.heads), dims: UnsafeBufferPointer(last.dims),
                    neurons: UnsafeBufferPointer(last.neurons))
    }

    // MARK: Summary: what logging reads, by name.

    /// Names and shapes of `summary`'s values, in order (a shape `[]` is one number): gate
    /// probabilities and the plan's part decisions (depth, 2; `Solver.planDecisions`); kept
    /// heads, value dims per head and neurons by the committed counts, and tokens entering each
    /// block (depth); expected MACs (continuous counts, gate probabilities), plan MACs (ms with a
    /// latency table: the trimmed plan's), dense and budget MACs; z; search steps.
    public var summaryLayout: [(name: String, shape: [Int])] {
        let d = solver.spec.depth
        return [("gate_probs", [d, 2]), ("gates_on", [d, 2]), ("kept_heads", [d]), ("kept_v_dims", [d]),
                ("kept_neurons", [d]), ("tokens", [d]), ("expected_macs", []), ("plan_macs", []),
                ("dense_macs", []), ("budget_macs", []), ("z", []), ("search_steps", [])]
    }

    /// Writes the values of `summaryLayout`, flattened, into `out`.
    public func summary(into out: UnsafeMutableBufferPointer<Double>) throws(UVCError) {
        let count = summaryLayout.reduce(0) { $0 + $1.shape.reduce(1, *) }
        try require(out.count == count, "out", "expected \(count) values, got \(out.count)")
        let plan = solver.planSummary(scores: lastScores)
        var values = solver.gateProbabilities() + plan.decisions
        for kind in GroupKind.allCases {
            let row = solver.state.committed[(kind.rawValue * solver.spec.depth)...].prefix(solver.spec.depth)
            values += row.map { solver.groups(kind) - $0 }
        }
        values += solver.committedTokens.map(Double.init)
        values += [solver.expectedMACs(), plan.cost, solver.denseMACs, solver.budgetMACs,
                   solver.state.z, solver.state.searchSteps]
        _ = out.update(fromContentsOf: values)
    }

    /// Names and sizes of the state's fields (`SolverState.Field`), in the order `fields` writes them.
    public var fieldsLayout: [(name: String, shape: [Int])] {
        SolverState.Field.allCases.map { ($0.name, [$0.count(solver.spec, solver.config)]) }
    }

    /// The state's float64 fields, flattened in `SolverState.Field` order (read-only diagnostics).
    public func fields(into out: UnsafeMutableBufferPointer<Double>) throws(UVCError) {
        let count = SolverState.encodedCount(solver.spec, solver.config)
        try require(out.count == count, "out", "expected \(count) values, got \(out.count)")
        var words = [Int64](repeating: 0, count: SolverState.rngWordCount)
        words.withUnsafeMutableBufferPointer { solver.state.encode(into: out, words: $0) }
    }

    // MARK: Saving and restoring.

    /// The state and the last scores as one byte string: identical inputs give identical bytes.
    public func save() -> [UInt8] {
        let count = SolverState.encodedCount(solver.spec, solver.config)
        var doubles = [Double](repeating: 0, count: count)
        var words = [Int64](repeating: 0, count: SolverState.rngWordCount)
        doubles.withUnsafeMutableBufferPointer { d in
            words.withUnsafeMutableBufferPointer { solver.state.encode(into: d, words: $0) }
        }
        var w = Archive.Writer(.solver, version: SolverSession.archiveVersion)
        w.put(doubles)
        for word in words { w.put(UInt64(bitPattern: word)) }
        for buffer in [last.heads, last.dims, last.neurons] { w.put(buffer) }
        return w.bytes
    }

    /// Restores what `save` wrote for a solver of the same spec and config, checking every
    /// value as a state given to the core is checked; on error nothing changes.
    public func load(_ bytes: UnsafeRawBufferPointer) throws(UVCError) {
        var r = try Archive.Reader(bytes, .solver, version: SolverSession.archiveVersion, argument: "state")
        let (spec, config) = (solver.spec, solver.config)
        let doubles = try r.doubles(SolverState.encodedCount(spec, config), "the solver state")
        var words = [Int64]()
        for _ in 0..<SolverState.rngWordCount { words.append(Int64(bitPattern: try r.word())) }
        let n = spec.groupArraySizes
        let scores = (try r.doubles(n.heads, "the last head scores"), try r.doubles(n.dims, "the last dim scores"),
                      try r.doubles(n.neurons, "the last neuron scores"))
        try r.finish()
        let state = try doubles.withUnsafeBufferPointer { (d) throws(UVCError) -> SolverState in
            try words.withUnsafeBufferPointer { (w) throws(UVCError) -> SolverState in
                try SolverState(encoded: d, words: w, spec: spec, config: config)
            }
        }
        try scores.0.withUnsafeBufferPointer { (h) throws(UVCError) in
            try scores.1.withUnsafeBufferPointer { (d) throws(UVCError) in
                try scores.2.withUnsafeBufferPointer { (k) throws(UVCError) in
                    try GroupScores(heads: h, dims: d, neurons: k).validate(
                        for: spec, names: ("state: last head scores", "state: last dim scores", "state: last neuron scores"))
                }
            }
        }
        solver.state = state
        _ = last.heads.update(fromContentsOf: scores.0)
        _ = last.dims.update(fromContentsOf: scores.1)
        _ = last.neurons.update(fromContentsOf: scores.2)
    }
}
