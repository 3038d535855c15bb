// The core's C ABI (Sources/UVCABI/include/uvc_abi.h): one entry point that runs a function
// or an object's method on its arguments, and one that releases an object. Each function
// names its arguments here, in order; the checks on their values and the mathematics live in
// the core.
import UVCABI
import UVCNative

/// Runs `function` (a `UVC_*` number; a method also takes the `object` a `*_NEW` call made) on
/// `count` arguments and fills `result`. Returns `UVC_OK` or the exception to raise, with the
/// message in `result.message`; never traps on bad input.
@c(uvc_call)
public func uvcCall(_ function: Int32, _ object: UnsafeMutableRawPointer?, _ args: UnsafePointer<uvc_array>?,
                    _ count: Int64, _ result: UnsafeMutablePointer<uvc_result>) -> Int32 {
    result.pointee.kind = Int32(UVC_RESULT_NONE)
    let call = Call(args: args, count: Int(count), result: result)
    let target = object.map { Unmanaged<Handle>.fromOpaque($0).takeUnretainedValue() }
    do throws(UVCError) {
        switch function {
        case Int32(UVC_LAYOUTS): call.bytes(Layouts.text, kind: UVC_RESULT_TEXT)
        case Int32(UVC_SOLVER_NEW): call.object(try SolverHandle(try call.arguments(SolverHandle.new)))
        case Int32(UVC_SAMPLER_NEW): call.object(try SamplerHandle(try call.arguments(SamplerHandle.new)))
        case Int32(UVC_SOLVER_LAYOUT)...Int32(UVC_SOLVER_LOAD):
            guard let h = target as? SolverHandle else { throw UVCError("self", "is not a solver", kind: .type) }
            try h.call(function, call)
        case Int32(UVC_SAMPLER_GROUP_COUNT)...Int32(UVC_SAMPLER_LOAD):
            guard let h = target as? SamplerHandle else { throw UVCError("self", "is not a sampler", kind: .type) }
            try h.call(function, call)
        default: try functions(function, call)
        }
        return Int32(UVC_OK)
    } catch {
        withUnsafeMutableBytes(of: &result.pointee.message) { out in
            let text = Array(error.description.utf8.prefix(out.count - 1))
            out.copyBytes(from: text + [0])
        }
        return error.kind.rawValue
    }
}

/// Releases an object made by a `*_NEW` call.
@c(uvc_free)
public func uvcFree(_ object: UnsafeMutableRawPointer) { Unmanaged<Handle>.fromOpaque(object).release() }

/// One call's arguments and result.
struct Call {
    let args: UnsafePointer<uvc_array>?
    let count: Int
    let result: UnsafeMutablePointer<uvc_result>

    func arguments(_ names: [String]) throws(UVCError) -> Arguments { try Arguments(args, count, names) }

    func float(_ v: Double) { (result.pointee.kind, result.pointee.value) = (Int32(UVC_RESULT_FLOAT), v) }

    func object(_ h: Handle) {
        (result.pointee.kind, result.pointee.object) = (Int32(UVC_RESULT_OBJECT), Unmanaged.passRetained(h).toOpaque())
    }

    /// Hands out `bytes`, which must stay alive until the next call on the object (or forever).
    func bytes(_ bytes: UnsafeBufferPointer<UInt8>, kind: Int) {
        result.pointee.kind = Int32(kind)
        result.pointee.bytes = UnsafeRawPointer(bytes.baseAddress)?.assumingMemoryBound(to: CChar.self)
        result.pointee.length = Int64(bytes.count)
    }
}

/// What every object holds besides its core value: the buffer its last bytes result points into.
class Handle {
    private var held = UnsafeMutableBufferPointer<UInt8>(start: nil, count: 0)

    func hold(_ bytes: [UInt8], _ call: Call, kind: Int) {
        held.deallocate()
        held = .allocate(capacity: bytes.count)
        _ = held.initialize(from: bytes)
        call.bytes(UnsafeBufferPointer(held), kind: kind)
    }

    deinit { held.deallocate() }
}

final class SolverHandle: Handle {
    /// The latency table's arrays follow the seed: all None for a MACs budget.
    static let new = ["spec", "convention", "config", "zlr_schedule", "seed"] + LatencyModel.argumentNames
    static let step = ["head_scores", "dim_scores", "neuron_scores", "gate_grad", "token_scores", "lr", "epoch",
                       "head_factor", "dim_factor", "neuron_factor"]
    static let gates = ["epoch", "gates_out"], masks = ["head_mask", "dim_mask", "neuron_mask"]
    static let plan = ["round_to", "fit", "counts_out", "head_mask", "dim_mask", "neuron_mask"]
    static let out = ["out"], none: [String] = [], load = ["state"]

    let session: SolverSession

    init(_ a: Arguments) throws(UVCError) {
        let model = try costModel(a, 0, 1)
        let (config, schedule) = (try a.doubles(2, (SolverConfig.Field.allCases.count, -1, -1)), try a.doubles(3))
        try require(schedule.shape.count == 1, "zlr_schedule", "expected a 1-d array")
        let latency = a.isNone(5) ? nil : try latencyModel(a, spec: model.spec, 5)
        session = SolverSession(try Solver(spec: model.spec, convention: model.convention,
                                           config: try SolverConfig(encoded: config.input, schedule: schedule.input),
                                           seed: UInt64(bitPattern: try a.integer(4)), latency: latency))
    }

    func call(_ function: Int32, _ call: Call) throws(UVCError) {
        let (d, h, v, k) = (session.solver.spec.depth, session.solver.spec.numHeads, session.solver.spec.vHeadDim,
                            session.solver.spec.mlpHidden)
        func outputs(_ a: Arguments, _ i: Int) throws(UVCError) -> GroupOutputs {
            GroupOutputs(heads: try a.output(i, d, h), dims: try a.output(i + 1, d, h, v), neurons: try a.output(i + 2, d, k))
        }
        switch function {
        case Int32(UVC_SOLVER_LAYOUT):
            _ = try call.arguments(SolverHandle.none)
            let groups = [("heads", [d, h]), ("dims", [d, h, v]), ("neurons", [d, k])]
            hold(Array(Layouts.solver(groups: groups, summary: session.summaryLayout, fields: session.fieldsLayout).utf8),
                 call, kind: UVC_RESULT_TEXT)
        case Int32(UVC_SOLVER_SAMPLE_GATES):
            let a = try call.arguments(SolverHandle.gates)
            try session.sampleGates(epoch: try a.real(0), into: try a.output(1, d, 2))
        case Int32(UVC_SOLVER_STEP):
            let a = try call.arguments(SolverHandle.step)
            let scores = GroupScores(heads: try a.input(0, d, h), dims: try a.input(1, d, h, v), neurons: try a.input(2, d, k))
            let gateGrad = a.isNone(3) ? nil : try a.input(3, d, 2)
            let tokens = a.isNone(4) ? nil : try a.input(4, d, session.solver.spec.numTokens)
            try session.step(scores: scores, gateGradient: gateGrad, tokenScores: tokens, learningRate: try a.real(5),
                             epoch: try a.real(6), factors: try outputs(a, 7))
        case Int32(UVC_SOLVER_MASKS):
            try session.masks(into: try outputs(try call.arguments(SolverHandle.masks), 0))
        case Int32(UVC_SOLVER_PLAN):
            let a = try call.arguments(SolverHandle.plan)
            let roundTo = Int(try a.integer(0, in: 1...(1 << 20)))
            let fit = try a.integer(1, in: 0...1) == 1
            let counts = try a.ints(2, (d, LayerPlan.encodedCount, -1), output: true)
            call.float(try session.plan(roundTo: roundTo, fit: fit, counts: counts.buffer, masks: try outputs(a, 3)))
        case Int32(UVC_SOLVER_SUMMARY):
            try session.summary(into: try call.arguments(SolverHandle.out).output(0).buffer)
        case Int32(UVC_SOLVER_FIELDS):
            try session.fields(into: try call.arguments(SolverHandle.out).output(0).buffer)
        case Int32(UVC_SOLVER_SAVE):
            _ = try call.arguments(SolverHandle.none)
            hold(session.save(), call, kind: UVC_RESULT_BYTES)
        default:  // UVC_SOLVER_LOAD
            try session.load(try call.arguments(SolverHandle.load).bytes(0))
        }
    }
}

final class SamplerHandle: Handle {
    static let new = ["seed"], groupCount = ["grouping", "batch"], sample = ["grouping", "groups_out", "sizes_out",
                                                                             "noise_out"]
    static let none: [String] = [], load = ["state"]

    var sampler: GroupSampler

    init(_ a: Arguments) throws(UVCError) { sampler = GroupSampler(seed: UInt64(bitPattern: try a.integer(0))) }

    func call(_ function: Int32, _ call: Call) throws(UVCError) {
        func grouping(_ a: Arguments) throws(UVCError) -> GroupPartition.Grouping {
            GroupPartition.Grouping.allCases[Int(try a.integer(0, in: 0...Int64(GroupPartition.Grouping.allCases.count - 1)))]
        }
        switch function {
        case Int32(UVC_SAMPLER_GROUP_COUNT):
            let a = try call.arguments(SamplerHandle.groupCount)
            call.float(Double(try grouping(a).groupCount(batch: Int(try a.integer(1, in: 1...(1 << 40))))))
        case Int32(UVC_SAMPLER_SAMPLE):
            let a = try call.arguments(SamplerHandle.sample)
            let groups = try a.ints(1, output: true), sizes = try a.ints(2, output: true)
            let noise = try a.output(3)
            try require(groups.shape.count == 1 && sizes.shape.count == 1, "groups_out", "expected 1-d arrays")
            try require(noise.shape.count == 2 && noise.extent(0) == sizes.buffer.count, "noise_out",
                        "expected shape (\(sizes.buffer.count), columns): one row per group")
            try sampler.sample(try grouping(a), groups: groups.buffer, sizes: sizes.buffer, noise: noise.buffer)
        case Int32(UVC_SAMPLER_SAVE):
            _ = try call.arguments(SamplerHandle.none)
            hold(sampler.save(), call, kind: UVC_RESULT_BYTES)
        default:  // UVC_SAMPLER_LOAD
            try sampler.load(try call.arguments(SamplerHandle.load).bytes(0))
        }
    }
}

/// The stateless functions: the cost model and USDC's group gates and resource loss.
private enum Names {
    static let costExact = ["spec", "convention", "plan", "layers_out", "globals_out"]
    static let costExpected = ["spec", "convention", "x", "out"]
    static let latencyExact = ["spec"] + LatencyModel.argumentNames + ["plan", "layers_out"]
    static let latencyExpected = ["spec"] + LatencyModel.argumentNames + ["x", "out"]
    static let gates = ["logits", "groups", "noise", "tau", "straight_through", "gates_out", "probs_out"]
    static let gatesBackward = ["logits", "groups", "noise", "gate_grad", "prob_grad", "tau", "grad_out"]
    static let gram = ["x", "y", "xtx", "xty"]
    static let ridge = ["xtx", "xty", "kept", "ridge", "out"]
    /// The latency table's arrays come last: all None for a MACs budget.
    static let loss = ["spec", "convention", "head_probs", "neuron_probs", "part_probs", "rates", "gate_costs",
                       "gate_probs", "target", "gamma", "dual", "values_out", "head_grad", "neuron_grad", "part_grad",
                       "rate_grad", "gate_costs_grad", "gate_probs_grad"] + LatencyModel.argumentNames
}

private func functions(_ function: Int32, _ call: Call) throws(UVCError) {
    switch function {
    case Int32(UVC_COST_EXACT):
        let a = try call.arguments(Names.costExact)
        let model = try costModel(a, 0, 1), d = model.spec.depth
        let plan = try ArchPlan(encoded: try a.ints(2, (d, LayerPlan.encodedCount, -1)).input, spec: model.spec)
        call.float(model.exact(plan, layers: try a.output(3, d, CostModel.Component.allCases.count),
                               globals: try a.output(4, CostModel.GlobalComponent.allCases.count)))
    case Int32(UVC_COST_EXPECTED):
        let a = try call.arguments(Names.costExpected)
        let model = try costModel(a, 0, 1), rows = RelaxedField.allCases.count
        let x = try a.input(2, rows, model.spec.depth), out = try a.output(3, rows, model.spec.depth)
        try model.validateRelaxed(x)
        call.float(model.expected(x, gradient: out))
    case Int32(UVC_LATENCY_EXACT):
        let a = try call.arguments(Names.latencyExact)
        let model = try latencyModel(a, spec: try spec(a, 0), 1), d = model.spec.depth
        let plan = try ArchPlan(encoded: try a.ints(9, (d, LayerPlan.encodedCount, -1)).input, spec: model.spec)
        call.float(try model.exact(plan, layers: try a.output(10, d, 2)))
    case Int32(UVC_LATENCY_EXPECTED):
        let a = try call.arguments(Names.latencyExpected)
        let model = try latencyModel(a, spec: try spec(a, 0), 1), rows = RelaxedField.allCases.count
        let x = try a.input(9, rows, model.spec.depth), out = try a.output(10, rows, model.spec.depth)
        try model.validateRelaxed(x)
        call.float(model.expected(x, gradient: out))
    case Int32(UVC_GROUP_GATES), Int32(UVC_GROUP_GATES_BACKWARD):
        let forward = function == Int32(UVC_GROUP_GATES)
        let a = try call.arguments(forward ? Names.gates : Names.gatesBackward)
        let (logits, noise) = (try a.doubles(0), try a.doubles(2))
        try require(logits.shape.count == 2 && logits.extent(0) >= 1, "logits", "expected shape (batch, columns), batch >= 1")
        let (b, c) = (logits.extent(0), logits.extent(1))
        try require(noise.shape.count == 2 && noise.extent(1) == c, "noise", "expected shape (groups, \(c))")
        let gates = try GroupGates(groups: try a.ints(1, (b, -1, -1)).input, groupCount: noise.extent(0), columns: c)
        let tau = try a.real(forward ? 3 : 5)
        try gates.validate(logits: logits.input, noise: noise.input, tau: tau)
        if forward {
            let straight = try a.real(4)
            try require(straight == 0 || straight == 1, "straight_through", "must be 0 or 1, got \(straight)")
            gates.forward(logits: logits.input, noise: noise.input, tau: tau, straightThrough: straight == 1,
                          gates: try a.output(5, b, c), probs: try a.output(6, b, c))
        } else {
            let (up, probGrad) = (try a.input(3, b, c), try a.input(4, b, c))
            for (k, g) in [(3, up), (4, probGrad)] where !g.allSatisfy({ $0.isFinite }) {
                throw UVCError(Names.gatesBackward[k], "expected finite values")
            }
            gates.backward(logits: logits.input, noise: noise.input, tau: tau, gateGradient: up, probGradient: probGrad,
                           into: try a.output(6, b, c))
        }
    case Int32(UVC_GRAM_ACCUMULATE):
        try gramAccumulate(try call.arguments(Names.gram))
    case Int32(UVC_RIDGE_SOLVE):
        let a = try call.arguments(Names.ridge)
        let xtx = try a.doubles(0)
        try require(xtx.shape.count == 2 && xtx.extent(0) == xtx.extent(1), "xtx", "expected a square (d, d) array")
        let (d, xty) = (xtx.extent(0), try a.doubles(1))
        try require(xty.shape.count == 2 && xty.extent(0) == d, "xty", "expected shape (\(d), outputs)")
        try require(d <= LeastSquares.maxWidth && xty.extent(1) <= LeastSquares.maxWidth, "xtx",
                    "at most \(LeastSquares.maxWidth) inputs and outputs, got \(d) and \(xty.extent(1))")
        let kept = try a.ints(2).input.map(Int.init)
        try require(kept.count >= 1 && zip(kept, kept.dropFirst()).allSatisfy(<) && kept.first! >= 0 && kept.last! < d,
                    "kept", "expected increasing column indices in [0, \(d)), at least one")
        let ridge = try a.real(3)
        try require(ridge.isFinite && ridge >= 0, "ridge", "must be finite and >= 0, got \(ridge)")
        let out = try a.output(4, kept.count, xty.extent(1))
        for v in [xtx, xty] where !v.input.allSatisfy({ $0.isFinite }) {
            throw UVCError(v.name, "must be finite (a NaN or infinite activation reached the Gram matrix)")
        }
        let method = LeastSquares.solve(xtx: xtx.input, xty: xty.input, d: d, m: xty.extent(1), kept: kept, ridge: ridge,
                                        into: out)
        try require(out.allSatisfy({ $0.isFinite }), "out", "the solution overflows float64: scale xtx and xty down")
        call.float(Double(method.rawValue))
    case Int32(UVC_RESOURCE_LOSS):
        let a = try call.arguments(Names.loss)
        let model = try costModel(a, 0, 1), d = model.spec.depth
        let (neurons, options) = (try a.doubles(3), try a.doubles(6))
        for w in [neurons, options] {
            try require(w.shape.count == 2 && w.extent(0) == d, w.name, "expected shape (\(d), width)")
        }
        let latency = a.isNone(18) ? nil : try latencyModel(a, spec: model.spec, 18)
        let loss = try ResourceLoss(model: model, latency: latency, neuronGroups: neurons.extent(1),
                                    gateOptions: options.extent(1))
        var x: [UnsafeBufferPointer<Double>] = [], g: [UnsafeMutableBufferPointer<Double>] = []
        for (k, (_, width)) in loss.widths.enumerated() {
            x.append(try a.input(2 + k, d, width))
            g.append(try a.output(12 + k, d, width))
        }
        let (inputs, target, gamma, dual) = (ResourceLoss.Arrays(x), try a.real(8), try a.real(9), try a.real(10))
        let values = try a.output(11, 3)
        try loss.validate(inputs, target: target, gamma: gamma, dual: dual)
        let v = loss.evaluate(inputs, target: target, gamma: gamma, dual: dual, gradient: ResourceLoss.Arrays(g))
        (values[0], values[1], values[2]) = (v.loss, v.ratio, v.cost)
    default: throw UVCError("function", "unknown function \(function)", kind: .type)
    }
}

/// XᵀX and XᵀY of a batch added to `xtx` and `xty` (float32 or float64 batches, float64 sums).
private func gramAccumulate(_ a: Arguments) throws(UVCError) {
    let kind = a.base[0].kind == Int32(UVC_FLOAT32) ? Int32(UVC_FLOAT32) : Int32(UVC_FLOAT64)
    func run<T: BinaryFloatingPoint>(_: T.Type) throws(UVCError) {
        let what = kind == Int32(UVC_FLOAT32) ? "a float32 array (as x)" : "a float64 array (as x)"
        let x = try a.view(0, T.self, kind, what), y = try a.view(1, T.self, kind, what)
        try require(x.shape.count == 2, "x", "expected shape (rows, inputs)")
        try require(y.shape.count == 2 && y.extent(0) == x.extent(0), "y", "expected shape (\(x.extent(0)), outputs)")
        let (d, m) = (x.extent(1), y.extent(1))
        try require(d <= LeastSquares.maxWidth && m <= LeastSquares.maxWidth, "x",
                    "at most \(LeastSquares.maxWidth) inputs and outputs, got \(d) and \(m)")
        let xtx = try a.output(2, d, d), xty = try a.output(3, d, m)
        for v in [x, y] where !v.input.allSatisfy({ $0.isFinite }) {
            throw UVCError(v.name, "must be finite; a NaN or infinite activation came in")
        }
        LeastSquares.accumulate(x: x.input, y: y.input, rows: x.extent(0), inputs: d, outputs: m, xtx: xtx, xty: xty)
        for (name, sums) in [("xtx", xtx), ("xty", xty)] where !sums.allSatisfy({ $0.isFinite }) {
            throw UVCError(name, "the sums overflow float64 (activations near 1e154 or larger): scale x and y down")
        }
    }
    if kind == Int32(UVC_FLOAT32) { try run(Float.self) } else { try run(Double.self) }
}

/// The spec at argument `i`.
func spec(_ a: Arguments, _ i: Int) throws(UVCError) -> ViTSpec {
    try ViTSpec(encoded: try a.ints(i, (ViTSpec.encodedCount, -1, -1)).input)
}

/// The spec and convention at arguments `i` and `j`.
func costModel(_ a: Arguments, _ i: Int, _ j: Int) throws(UVCError) -> CostModel {
    CostModel(spec: try spec(a, i), convention: try CostConvention(encoded: try a.input(j, CostConvention.encodedCount)))
}

/// The latency table of `spec` in the eight arguments from `i` on (`LatencyModel.argumentNames`).
func latencyModel(_ a: Arguments, spec: ViTSpec, _ i: Int) throws(UVCError) -> LatencyModel {
    func grid(_ k: Int) throws(UVCError) -> [Int] {
        let g = try a.ints(i + k)
        try require(g.shape.count == 1, g.name, "expected a 1-d array of counts")
        return g.input.map { Int($0) }
    }
    let (heads, vDims, neurons, tokens) = (try grid(0), try grid(1), try grid(2), try grid(3))
    return try LatencyModel(spec: spec, heads: heads, vDims: vDims, neurons: neurons, tokens: tokens,
                            attention: Array(try a.input(i + 4, heads.count, vDims.count, tokens.count)),
                            mlp: Array(try a.input(i + 5, neurons.count, tokens.count)),
                            drop: Array(try a.input(i + 6, tokens.count)), fixed: try a.real(i + 7))
}
