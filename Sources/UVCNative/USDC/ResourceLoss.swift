/// USDC's resource loss (seed 002, Eq. 9–11), L = γ·(F − f_t)² + z·(F − f_t), with F the expected
/// cost of the statically and dynamically compressed model, gate networks included, over the
/// dense cost. The cost is MACs (`CostModel`), or with a `LatencyModel` milliseconds of its
/// table (the gate networks' costs then in ms at the table's batch size too). z = 0 is the
/// paper's penalty; γ = 0 with a dual z ≥ 0 raised by the caller while F > f_t is the
/// UVC-style primal-dual budget term.
///
/// Inputs per layer l (all probabilities in [0, 1]):
/// - `headProbs[l, i]`: static keep probability a₀ of head i (`numHeads` per layer);
/// - `neuronProbs[l, k]`: that of MLP neuron group k (`neuronGroups` equal groups of
///   mlpHidden / neuronGroups neurons);
/// - `partProbs[l, p]`: that of the MHSA (p = 0) and MLP (p = 1) part;
/// - `rates[l, p]`: dynamic execution rate g of the part (its gate's mean over the batch);
/// - `gateCosts[l, o]`, `gateProbs[l, o]`: cost of gate network option o (MACs, or ms) and its
///   architecture weight (softmax over the options during search, one-hot once chosen). No
///   options: no gates.
///
/// With the expected cost C (`CostModel.expected` or `LatencyModel.expected`, dense value dims
/// and tokens):
///
///     cost = C(heads = Σᵢ a_h, neurons = (M/K)·Σₖ a_n, attn gate = a_attn·g_attn, mlp gate = a_mlp·g_mlp)
///          + Σ_l alive_l · Σ_o p_{l,o}·G_{l,o},   alive_l = 1 − (1 − a_attn)(1 − a_mlp)
///     F = cost / dense cost
///
/// MACs are multilinear in these, so with independent keep decisions C is their exact
/// expectation; the table's latency is piecewise linear in the counts, so C is the latency at
/// the expected counts (exact at 0/1 inputs). A layer's gate network goes only with the whole
/// layer (alive).
public struct ResourceLoss {
    public let model: CostModel
    /// Prices the plan in ms when set (then `model` only validates the spec).
    public let latency: LatencyModel?
    public let neuronGroups: Int
    public let gateOptions: Int
    /// Cost of the dense model without gate networks: MACs, or ms with `latency`.
    public let denseCost: Double

    /// The six per-layer arrays, `depth × width` row-major each (widths: numHeads, neuronGroups,
    /// 2, 2, gateOptions, gateOptions).
    public struct Arrays<Buffer> {
        public var headProbs, neuronProbs, partProbs, rates, gateCosts, gateProbs: Buffer
        public init(headProbs: Buffer, neuronProbs: Buffer, partProbs: Buffer, rates: Buffer, gateCosts: Buffer,
                    gateProbs: Buffer) {
            self.headProbs = headProbs
            self.neuronProbs = neuronProbs
            self.partProbs = partProbs
            self.rates = rates
            self.gateCosts = gateCosts
            self.gateProbs = gateProbs
        }

        /// The six arrays in `widths` order.
        /// - Precondition: `all.count == 6`.
        public init(_ all: [Buffer]) {
            precondition(all.count == 6)
            self.init(headProbs: all[0], neuronProbs: all[1], partProbs: all[2], rates: all[3], gateCosts: all[4],
                      gateProbs: all[5])
        }
    }

    public struct Value: Sendable {
        public var loss: Double
        /// F: expected cost over the dense cost.
        public var ratio: Double
        /// Expected cost, gate networks included (MACs, or ms).
        public var cost: Double
    }

    /// - Precondition: none; a `latency` table of another spec than `model`'s throws, naming it.
    public init(model: CostModel, latency: LatencyModel? = nil, neuronGroups: Int, gateOptions: Int) throws(UVCError) {
        let m = model.spec.mlpHidden
        try require(neuronGroups >= 1 && m % neuronGroups == 0, "neuron_probs",
                    "needs a number of neuron groups dividing mlp_hidden \(m), got \(neuronGroups)")
        try require(gateOptions >= 0, "gate_probs", "needs at least 0 gate options, got \(gateOptions)")
        if let latency {
            try require(latency.spec == model.spec, "latency", "the table was measured for another model shape "
                        + "(\(latency.spec)), not this spec (\(model.spec))")
        }
        self.model = model
        self.latency = latency
        self.neuronGroups = neuronGroups
        self.gateOptions = gateOptions
        denseCost = try latency?.exactTotal(.dense(model.spec)) ?? model.exactTotal(.dense(model.spec))
    }

    /// What the costs count: "MACs", or "ms" with a latency table.
    public var unit: String { latency == nil ? "MACs" : "ms" }

    /// Widths of the six arrays, in `Arrays` order, and their Python names (the gate networks'
    /// costs are `gate_macs`, or `gate_ms` with a latency table).
    public var widths: [(name: String, width: Int)] {
        [("head_probs", model.spec.numHeads), ("neuron_probs", neuronGroups), ("part_probs", 2), ("rates", 2),
         (latency == nil ? "gate_macs" : "gate_ms", gateOptions), ("gate_probs", gateOptions)]
    }

    /// Checks every value: probabilities in [0, 1], gate costs finite and ≥ 0, target finite
    /// and > 0, γ and z finite and ≥ 0.
    public func validate(_ x: Arrays<UnsafeBufferPointer<Double>>, target: Double, gamma: Double,
                         dual z: Double) throws(UVCError) {
        try require(target.isFinite && target > 0, "target",
                    "must be finite and > 0 (a ratio of the dense \(unit)), got \(target)")
        try require(gamma.isFinite && gamma >= 0, "gamma", "must be finite and >= 0, got \(gamma)")
        try require(z.isFinite && z >= 0, "dual", "must be finite and >= 0, got \(z)")
        let arrays = [x.headProbs, x.neuronProbs, x.partProbs, x.rates, x.gateCosts, x.gateProbs]
        for (k, (name, width)) in widths.enumerated() {
            let upper = k == 4 ? Double.infinity : 1
            for (i, v) in arrays[k].enumerated() {
                try require(v.isFinite && v >= 0 && v <= upper, name,
                            "value at (\(i / width), \(i % width)) is \(v), expected a finite value in [0, \(upper)]")
            }
        }
    }

    /// The loss, F and the expected cost; writes ∂L/∂(each input) into `gradient`.
    public func evaluate(_ x: Arrays<UnsafeBufferPointer<Double>>, target: Double, gamma: Double, dual z: Double,
                         gradient g: Arrays<UnsafeMutableBufferPointer<Double>>) -> Value {
        let spec = model.spec, depth = spec.depth, heads = spec.numHeads, groups = neuronGroups
        let groupSize = Double(spec.mlpHidden / groups), options = gateOptions
        let rows = RelaxedField.allCases.count
        var relaxed = [Double](repeating: 0, count: rows * depth)
        var partial = [Double](repeating: 0, count: rows * depth)
        let at = { (f: RelaxedField, l: Int) in f.rawValue * depth + l }
        var gateCost = [Double](repeating: 0, count: depth)
        for l in 0..<depth {
            var h = 0.0, n = 0.0
            for i in 0..<heads { h += x.headProbs[l * heads + i] }
            for k in 0..<groups { n += x.neuronProbs[l * groups + k] }
            relaxed[at(.heads, l)] = h
            relaxed[at(.qkDim, l)] = Double(spec.qkHeadDim)
            relaxed[at(.vDim, l)] = Double(spec.vHeadDim)
            relaxed[at(.neurons, l)] = groupSize * n
            relaxed[at(.attentionGate, l)] = x.partProbs[2 * l] * x.rates[2 * l]
            relaxed[at(.mlpGate, l)] = x.partProbs[2 * l + 1] * x.rates[2 * l + 1]
            relaxed[at(.tokens, l)] = Double(spec.numTokens)
            for o in 0..<options { gateCost[l] += x.gateProbs[l * options + o] * x.gateCosts[l * options + o] }
        }
        var cost = relaxed.withUnsafeBufferPointer { r in
            partial.withUnsafeMutableBufferPointer { latency?.expected(r, gradient: $0) ?? model.expected(r, gradient: $0) }
        }
        for l in 0..<depth {
            let alive = 1 - (1 - x.partProbs[2 * l]) * (1 - x.partProbs[2 * l + 1])
            cost += alive * gateCost[l]
        }
        let ratio = cost / denseCost
        let loss = gamma * (ratio - target) * (ratio - target) + z * (ratio - target)
        // ∂L/∂cost: the chain's common factor.
        let scale = (2 * gamma * (ratio - target) + z) / denseCost
        for l in 0..<depth {
            let aa = x.partProbs[2 * l], am = x.partProbs[2 * l + 1]
            let ga = x.rates[2 * l], gm = x.rates[2 * l + 1]
            let alive = 1 - (1 - aa) * (1 - am)
            for i in 0..<heads { g.headProbs[l * heads + i] = scale * partial[at(.heads, l)] }
            for k in 0..<groups { g.neuronProbs[l * groups + k] = scale * groupSize * partial[at(.neurons, l)] }
            let dAttn = partial[at(.attentionGate, l)], dMlp = partial[at(.mlpGate, l)]
            g.partProbs[2 * l] = scale * (dAttn * ga + (1 - am) * gateCost[l])
            g.partProbs[2 * l + 1] = scale * (dMlp * gm + (1 - aa) * gateCost[l])
            g.rates[2 * l] = scale * dAttn * aa
            g.rates[2 * l + 1] = scale * dMlp * am
            for o in 0..<options {
                g.gateCosts[l * options + o] = scale * alive * x.gateProbs[l * options + o]
                g.gateProbs[l * options + o] = scale * alive * x.gateCosts[l * options + o]
            }
        }
        return Value(loss: loss, ratio: ratio, cost: cost)
    }
}
