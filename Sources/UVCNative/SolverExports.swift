// C entry points of the solver. The solver's state lives in two caller-owned arrays (float64
// values and int64 generator words), decoded and checked on every call and written back only
// after a call succeeds; the core keeps nothing between calls.
//
// Shapes: spec (13,) int64, convention (5,), config (SolverConfig.Field count,), schedule (k,),
// state (SolverState.encodedCount,), words (4,) int64; per-group arrays as `GroupArrays`.

/// Everything but the per-call arrays: spec, convention, config and schedule.
private struct SolverSetup {
    let spec: ViTSpec
    let convention: CostConvention
    let config: SolverConfig

    init(_ spec: ArrayArg<Int64>, _ convention: ArrayArg<Double>, _ config: ArrayArg<Double>,
         _ schedule: ArrayArg<Double>) throws(UVCError) {
        let model = try costModel(spec, convention)
        try config.expect([SolverConfig.Field.allCases.count])
        try require(schedule.shape.count == 1, schedule.name, "expected a 1-d array, got shape \(shapeString(schedule.shape))")
        self.spec = model.spec
        self.convention = model.convention
        self.config = try SolverConfig(encoded: config.buffer, schedule: schedule.buffer)
    }

    var stateShape: [Int] { [SolverState.encodedCount(spec, config)] }

    func solver(_ state: ArrayArg<Double>, _ words: ArrayArg<Int64>) throws(UVCError) -> Solver {
        try state.expect(stateShape)
        try words.expect([SolverState.rngWordCount])
        return try Solver(spec: spec, convention: convention, config: config,
                          state: SolverState(encoded: state.buffer, words: words.buffer, spec: spec, config: config))
    }

    func groupShapes() -> [[Int]] {
        [[spec.depth, spec.numHeads], [spec.depth, spec.numHeads, spec.vHeadDim], [spec.depth, spec.mlpHidden]]
    }

    func scores(_ a: ArrayArg<Double>, _ b: ArrayArg<Double>, _ c: ArrayArg<Double>) throws(UVCError) -> GroupScores {
        let shapes = groupShapes()
        try a.expect(shapes[0])
        try b.expect(shapes[1])
        try c.expect(shapes[2])
        return GroupScores(heads: a.buffer, dims: b.buffer, neurons: c.buffer)
    }

    func outputs(_ a: OutArg<Double>, _ b: OutArg<Double>, _ c: OutArg<Double>) throws(UVCError) -> GroupOutputs {
        let shapes = groupShapes()
        try a.expect(shapes[0])
        try b.expect(shapes[1])
        try c.expect(shapes[2])
        return GroupOutputs(heads: a.buffer, dims: b.buffer, neurons: c.buffer)
    }
}

/// Writes the state back only if it passes the checks a state given to the core passes, so no
/// sequence of accepted calls can reach a state the next call refuses; otherwise the caller's
/// state stays as it was.
private func writeBack(_ solver: Solver, _ state: OutArg<Double>, _ words: OutArg<Int64>) throws(UVCError) {
    do throws(UVCError) {
        try solver.state.validate(spec: solver.spec, config: solver.config)
    } catch {
        throw UVCError(error.argument, "this call would leave an invalid solver state (\(error.message)); "
                       + "the state is unchanged (the inputs were accepted, so this is a bug: please report it)")
    }
    solver.state.encode(into: state.buffer, words: words.buffer)
}

/// Sizes of the state's float64 fields, in `SolverState.Field` order. sizes out: (fields,) int64.
@c(uvc_solver_sizes)
public func uvcSolverSizes(
    _ specData: UnsafePointer<Int64>, _ specShape: UnsafePointer<Int>, _ specDims: Int,
    _ convData: UnsafePointer<Double>, _ convShape: UnsafePointer<Int>, _ convDims: Int,
    _ configData: UnsafePointer<Double>, _ configShape: UnsafePointer<Int>, _ configDims: Int,
    _ scheduleData: UnsafePointer<Double>, _ scheduleShape: UnsafePointer<Int>, _ scheduleDims: Int,
    _ sizesData: UnsafeMutablePointer<Int64>, _ sizesShape: UnsafePointer<Int>, _ sizesDims: Int,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let setup = try SolverSetup(ArrayArg("spec", specData, specShape, specDims),
                                    ArrayArg("convention", convData, convShape, convDims),
                                    ArrayArg("config", configData, configShape, configDims),
                                    ArrayArg("zlr_schedule", scheduleData, scheduleShape, scheduleDims))
        let sizes = OutArg("sizes_out", sizesData, sizesShape, sizesDims)
        try sizes.expect([SolverState.Field.allCases.count])
        for f in SolverState.Field.allCases { sizes.buffer[f.rawValue] = Int64(f.count(setup.spec, setup.config)) }
    }
}

/// Writes the initial state of a solver seeded with `seed` (1,) int64; checks that the budget
/// is reachable. Writes the dense MACs and the smallest reachable MACs to `macs` (2,).
@c(uvc_solver_init)
public func uvcSolverInit(
    _ specData: UnsafePointer<Int64>, _ specShape: UnsafePointer<Int>, _ specDims: Int,
    _ convData: UnsafePointer<Double>, _ convShape: UnsafePointer<Int>, _ convDims: Int,
    _ configData: UnsafePointer<Double>, _ configShape: UnsafePointer<Int>, _ configDims: Int,
    _ scheduleData: UnsafePointer<Double>, _ scheduleShape: UnsafePointer<Int>, _ scheduleDims: Int,
    _ seedData: UnsafePointer<Int64>, _ seedShape: UnsafePointer<Int>, _ seedDims: Int,
    _ stateData: UnsafeMutablePointer<Double>, _ stateShape: UnsafePointer<Int>, _ stateDims: Int,
    _ wordsData: UnsafeMutablePointer<Int64>, _ wordsShape: UnsafePointer<Int>, _ wordsDims: Int,
    _ macsData: UnsafeMutablePointer<Double>, _ macsShape: UnsafePointer<Int>, _ macsDims: Int,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let setup = try SolverSetup(ArrayArg("spec", specData, specShape, specDims),
                                    ArrayArg("convention", convData, convShape, convDims),
                                    ArrayArg("config", configData, configShape, configDims),
                                    ArrayArg("zlr_schedule", scheduleData, scheduleShape, scheduleDims))
        let seed = ArrayArg("seed", seedData, seedShape, seedDims)
        try seed.expect([1])
        let state = OutArg("state", stateData, stateShape, stateDims)
        try state.expect(setup.stateShape)
        let words = OutArg("words", wordsData, wordsShape, wordsDims)
        try words.expect([SolverState.rngWordCount])
        let macs = OutArg("macs_out", macsData, macsShape, macsDims)
        try macs.expect([2])
        let solver = try Solver(spec: setup.spec, convention: setup.convention, config: setup.config,
                                seed: UInt64(bitPattern: seed.buffer[0]))
        try writeBack(solver, state, words)
        macs.buffer[0] = solver.denseMACs
        macs.buffer[1] = solver.smallestReachableMACs
    }
}

/// Draws this step's gates into `gates` (depth, 2) and advances the state.
@c(uvc_solver_sample_gates)
public func uvcSolverSampleGates(
    _ specData: UnsafePointer<Int64>, _ specShape: UnsafePointer<Int>, _ specDims: Int,
    _ convData: UnsafePointer<Double>, _ convShape: UnsafePointer<Int>, _ convDims: Int,
    _ configData: UnsafePointer<Double>, _ configShape: UnsafePointer<Int>, _ configDims: Int,
    _ scheduleData: UnsafePointer<Double>, _ scheduleShape: UnsafePointer<Int>, _ scheduleDims: Int,
    _ stateData: UnsafeMutablePointer<Double>, _ stateShape: UnsafePointer<Int>, _ stateDims: Int,
    _ wordsData: UnsafeMutablePointer<Int64>, _ wordsShape: UnsafePointer<Int>, _ wordsDims: Int,
    _ gatesData: UnsafeMutablePointer<Double>, _ gatesShape: UnsafePointer<Int>, _ gatesDims: Int,
    _ epoch: Double,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let setup = try SolverSetup(ArrayArg("spec", specData, specShape, specDims),
                                    ArrayArg("convention", convData, convShape, convDims),
                                    ArrayArg("config", configData, configShape, configDims),
                                    ArrayArg("zlr_schedule", scheduleData, scheduleShape, scheduleDims))
        let state = OutArg("state", stateData, stateShape, stateDims)
        let words = OutArg("words", wordsData, wordsShape, wordsDims)
        var solver = try setup.solver(ArrayArg("state", stateData, stateShape, stateDims),
                                      ArrayArg("words", wordsData, wordsShape, wordsDims))
        let gates = OutArg("gates_out", gatesData, gatesShape, gatesDims)
        try gates.expect([setup.spec.depth, 2])
        try solver.sampleGates(epoch: epoch, into: gates.buffer)
        try writeBack(solver, state, words)
    }
}

/// One solver step. Scores in, proximal factors out; the scores are also copied to the
/// `last_*` arrays while they are checked, so the caller passes spare arrays and makes them its
/// last scores (what masks and plan read) only once the call succeeds. `gate_grad` is (depth, 2) or (0,) for none;
/// `token_scores` (depth, num_tokens) or (0,) for none (see `Solver.step`).
@c(uvc_solver_step)
public func uvcSolverStep(
    _ specData: UnsafePointer<Int64>, _ specShape: UnsafePointer<Int>, _ specDims: Int,
    _ convData: UnsafePointer<Double>, _ convShape: UnsafePointer<Int>, _ convDims: Int,
    _ configData: UnsafePointer<Double>, _ configShape: UnsafePointer<Int>, _ configDims: Int,
    _ scheduleData: UnsafePointer<Double>, _ scheduleShape: UnsafePointer<Int>, _ scheduleDims: Int,
    _ stateData: UnsafeMutablePointer<Double>, _ stateShape: UnsafePointer<Int>, _ stateDims: Int,
    _ wordsData: UnsafeMutablePointer<Int64>, _ wordsShape: UnsafePointer<Int>, _ wordsDims: Int,
    _ headData: UnsafePointer<Double>, _ headShape: UnsafePointer<Int>, _ headDims: Int,
    _ dimData: UnsafePointer<Double>, _ dimShape: UnsafePointer<Int>, _ dimDims: Int,
    _ neuronData: UnsafePointer<Double>, _ neuronShape: UnsafePointer<Int>, _ neuronDims: Int,
    _ gradData: UnsafePointer<Double>, _ gradShape: UnsafePointer<Int>, _ gradDims: Int,
    _ headOut: UnsafeMutablePointer<Double>, _ headOutShape: UnsafePointer<Int>, _ headOutDims: Int,
    _ dimOut: UnsafeMutablePointer<Double>, _ dimOutShape: UnsafePointer<Int>, _ dimOutDims: Int,
    _ neuronOut: UnsafeMutablePointer<Double>, _ neuronOutShape: UnsafePointer<Int>, _ neuronOutDims: Int,
    _ lastHead: UnsafeMutablePointer<Double>, _ lastHeadShape: UnsafePointer<Int>, _ lastHeadDims: Int,
    _ lastDim: UnsafeMutablePointer<Double>, _ lastDimShape: UnsafePointer<Int>, _ lastDimDims: Int,
    _ lastNeuron: UnsafeMutablePointer<Double>, _ lastNeuronShape: UnsafePointer<Int>, _ lastNeuronDims: Int,
    _ tokenData: UnsafePointer<Double>, _ tokenShape: UnsafePointer<Int>, _ tokenDims: Int,
    _ learningRate: Double, _ epoch: Double,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let setup = try SolverSetup(ArrayArg("spec", specData, specShape, specDims),
                                    ArrayArg("convention", convData, convShape, convDims),
                                    ArrayArg("config", configData, configShape, configDims),
                                    ArrayArg("zlr_schedule", scheduleData, scheduleShape, scheduleDims))
        let state = OutArg("state", stateData, stateShape, stateDims)
        let words = OutArg("words", wordsData, wordsShape, wordsDims)
        var solver = try setup.solver(ArrayArg("state", stateData, stateShape, stateDims),
                                      ArrayArg("words", wordsData, wordsShape, wordsDims))
        let scores = try setup.scores(ArrayArg("head_scores", headData, headShape, headDims),
                                      ArrayArg("dim_scores", dimData, dimShape, dimDims),
                                      ArrayArg("neuron_scores", neuronData, neuronShape, neuronDims))
        let grad = ArrayArg("gate_grad", gradData, gradShape, gradDims)
        if grad.shape != [0] { try grad.expect([setup.spec.depth, 2]) }
        let factors = try setup.outputs(OutArg("head_factor", headOut, headOutShape, headOutDims),
                                        OutArg("dim_factor", dimOut, dimOutShape, dimOutDims),
                                        OutArg("neuron_factor", neuronOut, neuronOutShape, neuronOutDims))
        let last = try setup.outputs(OutArg("last_head", lastHead, lastHeadShape, lastHeadDims),
                                     OutArg("last_dim", lastDim, lastDimShape, lastDimDims),
                                     OutArg("last_neuron", lastNeuron, lastNeuronShape, lastNeuronDims))
        let tokens = ArrayArg("token_scores", tokenData, tokenShape, tokenDims)
        if tokens.shape != [0] { try tokens.expect([setup.spec.depth, setup.spec.numTokens]) }
        try solver.step(scores: scores, gateGradient: grad.shape == [0] ? nil : grad.buffer,
                        tokenScores: tokens.shape == [0] ? nil : tokens.buffer,
                        learningRate: learningRate, epoch: epoch, factors: factors, scoresCopy: last)
        try writeBack(solver, state, words)
    }
}

/// Keep masks (1 = kept) of the current committed counts under the given scores.
@c(uvc_solver_masks)
public func uvcSolverMasks(
    _ specData: UnsafePointer<Int64>, _ specShape: UnsafePointer<Int>, _ specDims: Int,
    _ convData: UnsafePointer<Double>, _ convShape: UnsafePointer<Int>, _ convDims: Int,
    _ configData: UnsafePointer<Double>, _ configShape: UnsafePointer<Int>, _ configDims: Int,
    _ scheduleData: UnsafePointer<Double>, _ scheduleShape: UnsafePointer<Int>, _ scheduleDims: Int,
    _ stateData: UnsafePointer<Double>, _ stateShape: UnsafePointer<Int>, _ stateDims: Int,
    _ wordsData: UnsafePointer<Int64>, _ wordsShape: UnsafePointer<Int>, _ wordsDims: Int,
    _ headData: UnsafePointer<Double>, _ headShape: UnsafePointer<Int>, _ headDims: Int,
    _ dimData: UnsafePointer<Double>, _ dimShape: UnsafePointer<Int>, _ dimDims: Int,
    _ neuronData: UnsafePointer<Double>, _ neuronShape: UnsafePointer<Int>, _ neuronDims: Int,
    _ headOut: UnsafeMutablePointer<Double>, _ headOutShape: UnsafePointer<Int>, _ headOutDims: Int,
    _ dimOut: UnsafeMutablePointer<Double>, _ dimOutShape: UnsafePointer<Int>, _ dimOutDims: Int,
    _ neuronOut: UnsafeMutablePointer<Double>, _ neuronOutShape: UnsafePointer<Int>, _ neuronOutDims: Int,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let setup = try SolverSetup(ArrayArg("spec", specData, specShape, specDims),
                                    ArrayArg("convention", convData, convShape, convDims),
                                    ArrayArg("config", configData, configShape, configDims),
                                    ArrayArg("zlr_schedule", scheduleData, scheduleShape, scheduleDims))
        let solver = try setup.solver(ArrayArg("state", stateData, stateShape, stateDims),
                                      ArrayArg("words", wordsData, wordsShape, wordsDims))
        let scores = try setup.scores(ArrayArg("head_scores", headData, headShape, headDims),
                                      ArrayArg("dim_scores", dimData, dimShape, dimDims),
                                      ArrayArg("neuron_scores", neuronData, neuronShape, neuronDims))
        let out = try setup.outputs(OutArg("head_mask", headOut, headOutShape, headOutDims),
                                    OutArg("dim_mask", dimOut, dimOutShape, dimOutDims),
                                    OutArg("neuron_mask", neuronOut, neuronOutShape, neuronOutDims))
        try solver.masks(scores: scores, into: out)
    }
}

/// The export plan: per-layer counts (depth, 6) int64 as `ArchPlan`'s encoding, keep masks,
/// and its exact MACs in `total`. `roundTo` must be an integer ≥ 1.
@c(uvc_solver_plan)
public func uvcSolverPlan(
    _ specData: UnsafePointer<Int64>, _ specShape: UnsafePointer<Int>, _ specDims: Int,
    _ convData: UnsafePointer<Double>, _ convShape: UnsafePointer<Int>, _ convDims: Int,
    _ configData: UnsafePointer<Double>, _ configShape: UnsafePointer<Int>, _ configDims: Int,
    _ scheduleData: UnsafePointer<Double>, _ scheduleShape: UnsafePointer<Int>, _ scheduleDims: Int,
    _ stateData: UnsafePointer<Double>, _ stateShape: UnsafePointer<Int>, _ stateDims: Int,
    _ wordsData: UnsafePointer<Int64>, _ wordsShape: UnsafePointer<Int>, _ wordsDims: Int,
    _ headData: UnsafePointer<Double>, _ headShape: UnsafePointer<Int>, _ headDims: Int,
    _ dimData: UnsafePointer<Double>, _ dimShape: UnsafePointer<Int>, _ dimDims: Int,
    _ neuronData: UnsafePointer<Double>, _ neuronShape: UnsafePointer<Int>, _ neuronDims: Int,
    _ countsData: UnsafeMutablePointer<Int64>, _ countsShape: UnsafePointer<Int>, _ countsDims: Int,
    _ headOut: UnsafeMutablePointer<Double>, _ headOutShape: UnsafePointer<Int>, _ headOutDims: Int,
    _ dimOut: UnsafeMutablePointer<Double>, _ dimOutShape: UnsafePointer<Int>, _ dimOutDims: Int,
    _ neuronOut: UnsafeMutablePointer<Double>, _ neuronOutShape: UnsafePointer<Int>, _ neuronOutDims: Int,
    _ roundTo: Double, _ total: UnsafeMutablePointer<Double>,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let setup = try SolverSetup(ArrayArg("spec", specData, specShape, specDims),
                                    ArrayArg("convention", convData, convShape, convDims),
                                    ArrayArg("config", configData, configShape, configDims),
                                    ArrayArg("zlr_schedule", scheduleData, scheduleShape, scheduleDims))
        let solver = try setup.solver(ArrayArg("state", stateData, stateShape, stateDims),
                                      ArrayArg("words", wordsData, wordsShape, wordsDims))
        let scores = try setup.scores(ArrayArg("head_scores", headData, headShape, headDims),
                                      ArrayArg("dim_scores", dimData, dimShape, dimDims),
                                      ArrayArg("neuron_scores", neuronData, neuronShape, neuronDims))
        let counts = OutArg("counts_out", countsData, countsShape, countsDims)
        try counts.expect([setup.spec.depth, LayerPlan.encodedCount])
        let out = try setup.outputs(OutArg("head_mask", headOut, headOutShape, headOutDims),
                                    OutArg("dim_mask", dimOut, dimOutShape, dimOutDims),
                                    OutArg("neuron_mask", neuronOut, neuronOutShape, neuronOutDims))
        try require(roundTo.isFinite && roundTo == roundTo.rounded() && roundTo >= 1 && roundTo <= Double(1 << 20),
                    "round_to", "must be an integer >= 1, got \(roundTo)")
        let (plan, macs) = try solver.plan(scores: scores, roundTo: Int(roundTo), into: out)
        for (l, p) in plan.layers.enumerated() {
            let row = [p.heads, p.vDim, p.neurons, p.attention ? 1 : 0, p.mlp ? 1 : 0, p.tokens]
            for (k, v) in row.enumerated() { counts.buffer[l * LayerPlan.encodedCount + k] = Int64(v) }
        }
        total.pointee = macs
    }
}

/// For logging: gate probabilities and decisions (depth, 2), committed kept counts (4, depth)
/// (heads, value dims per head, neurons, tokens entering the block), and `values` (4,):
/// expected MACs, plan MACs, dense MACs, budget MACs.
@c(uvc_solver_summary)
public func uvcSolverSummary(
    _ specData: UnsafePointer<Int64>, _ specShape: UnsafePointer<Int>, _ specDims: Int,
    _ convData: UnsafePointer<Double>, _ convShape: UnsafePointer<Int>, _ convDims: Int,
    _ configData: UnsafePointer<Double>, _ configShape: UnsafePointer<Int>, _ configDims: Int,
    _ scheduleData: UnsafePointer<Double>, _ scheduleShape: UnsafePointer<Int>, _ scheduleDims: Int,
    _ stateData: UnsafePointer<Double>, _ stateShape: UnsafePointer<Int>, _ stateDims: Int,
    _ wordsData: UnsafePointer<Int64>, _ wordsShape: UnsafePointer<Int>, _ wordsDims: Int,
    _ probsData: UnsafeMutablePointer<Double>, _ probsShape: UnsafePointer<Int>, _ probsDims: Int,
    _ decisionsData: UnsafeMutablePointer<Double>, _ decisionsShape: UnsafePointer<Int>, _ decisionsDims: Int,
    _ keptData: UnsafeMutablePointer<Double>, _ keptShape: UnsafePointer<Int>, _ keptDims: Int,
    _ valuesData: UnsafeMutablePointer<Double>, _ valuesShape: UnsafePointer<Int>, _ valuesDims: Int,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let setup = try SolverSetup(ArrayArg("spec", specData, specShape, specDims),
                                    ArrayArg("convention", convData, convShape, convDims),
                                    ArrayArg("config", configData, configShape, configDims),
                                    ArrayArg("zlr_schedule", scheduleData, scheduleShape, scheduleDims))
        let solver = try setup.solver(ArrayArg("state", stateData, stateShape, stateDims),
                                      ArrayArg("words", wordsData, wordsShape, wordsDims))
        let l = setup.spec.depth
        let probs = OutArg("probs_out", probsData, probsShape, probsDims)
        try probs.expect([l, 2])
        let decisions = OutArg("decisions_out", decisionsData, decisionsShape, decisionsDims)
        try decisions.expect([l, 2])
        let kept = OutArg("kept_out", keptData, keptShape, keptDims)
        try kept.expect([4, l])
        let values = OutArg("values_out", valuesData, valuesShape, valuesDims)
        try values.expect([4])
        _ = probs.buffer.update(fromContentsOf: solver.gateProbabilities())
        _ = decisions.buffer.update(fromContentsOf: solver.gateDecisions())
        for kind in GroupKind.allCases {
            for layer in 0..<l {
                let i = kind.rawValue * l + layer
                kept.buffer[i] = solver.groups(kind) - solver.state.committed[i]
            }
        }
        for (layer, tokens) in solver.committedTokens.enumerated() { kept.buffer[3 * l + layer] = Double(tokens) }
        values.buffer[0] = solver.expectedMACs()
        values.buffer[1] = solver.planMACs()
        values.buffer[2] = solver.denseMACs
        values.buffer[3] = solver.budgetMACs
    }
}
