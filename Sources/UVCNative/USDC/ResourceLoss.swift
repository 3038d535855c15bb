/// USDC's resource loss (seed 002, Eq. 9–11), L = γ·(F − f_t)² + z·(F − f_t), with F the expected
/// MACs of the statically and dynamically compressed model, gate networks included, over the
/// dense MACs. z = 0 is the paper's penalty; γ = 0 with a dual z ≥ 0 raised by the caller while
/// F > f_t is the UVC-style primal-dual budget term.
///
/// Inputs per layer l (all probabilities in [0, 1]):
/// - `headProbs[l, i]`: static keep probability a₀ of head i (`numHeads` per layer);
/// - `neuronProbs[l, k]`: that of MLP neuron group k (`neuronGroups` equal groups of
///   mlpHidden / neuronGroups neurons);
/// - `partProbs[l, p]`: that of the MHSA (p = 0) and MLP (p = 1) part;
/// - `rates[l, p]`: dynamic execution rate g of the part (its gate's mean over the batch);
/// - `gateMACs[l, o]`, `gateProbs[l, o]`: MACs of gate network option o and its architecture
///   weight (softmax over the options during search, one-hot once chosen). No options: no gates.
///
/// With the cost model's expected cost C (`CostModel.expected`, dense value dims and tokens):
///
///     macs = C(heads = Σᵢ a_h, neurons = (M/K)·Σₖ a_n, attn gate = a_attn·g_attn, mlp gate = a_mlp·g_mlp)
///          + Σ_l alive_l · Σ_o p_{l,o}·G_{l,o},   alive_l = 1 − (1 − a_attn)(1 − a_mlp)
///     F = macs / dense MACs
///
/// The cost is multilinear in these, so with independent keep decisions it is their exact
/// expectation; a layer's gate network goes only with the whole layer (alive).
public struct ResourceLoss {
    public let model: CostModel
    public let neuronGroups: Int
    public let gateOptions: Int
    public let denseMACs: Double

    /// The six per-layer arrays, `depth × width` row-major each (widths: numHeads, neuronGroups,
    /// 2, 2, gateOptions, gateOptions).
    public struct Arrays<Buffer> {
        public var headProbs, neuronProbs, partProbs, rates, gateMACs, gateProbs: Buffer
        public init(headProbs: Buffer, neuronProbs: Buffer, partProbs: Buffer, rates: Buffer, gateMACs: Buffer,
                    gateProbs: Buffer) {
            self.headProbs = headProbs
            self.neuronProbs = neuronProbs
            self.partProbs = partProbs
            self.rates = rates
            self.gateMACs = gateMACs
            self.gateProbs = gateProbs
        }

        /// The six arrays in `widths` order.
        /// - Precondition: `all.count == 6`.
        public init(_ all: [Buffer]) {
            precondition(all.count == 6)
            self.init(headProbs: all[0], neuronProbs: all[1], partProbs: all[2], rates: all[3], gateMACs: all[4],
                      gateProbs: all[5])
        }
    }

    public struct Value: Sendable {
        public var loss: Double
        /// F: expected MACs over the dense MACs.
        public var ratio: Double
        /// Expected MACs, gate networks included.
        public var macs: Double
    }

    public init(model: CostModel, neuronGroups: Int, gateOptions: Int) throws(UVCError) {
        let m = model.spec.mlpHidden
        try require(neuronGroups >= 1 && m % neuronGroups == 0, "neuron_probs",
                    "needs a number of neuron groups dividing mlp_hidden \(m), got \(neuronGroups)")
        try require(gateOptions >= 0, "gate_probs", "needs at least 0 gate options, got \(gateOptions)")
        self.model = model
        self.neuronGroups = neuronGroups
        self.gateOptions = gateOptions
        denseMACs = model.exactTotal(ArchPlan.dense(model.spec))
    }

    /// Widths of the six arrays, in `Arrays` order, and their Python names.
    public var widths: [(name: String, width: Int)] {
        [("head_probs", model.spec.numHeads), ("neuron_probs", neuronGroups), ("part_probs", 2), ("rates", 2),
         ("gate_macs", gateOptions), ("gate_probs", gateOptions)]
    }

    /// Checks every value: probabilities in [0, 1], gate MACs finite and ≥ 0, target finite
    /// and > 0, γ and z finite and ≥ 0.
    public func validate(_ x: Arrays<UnsafeBufferPointer<Double>>, target: Double, gamma: Double,
                         dual z: Double) throws(UVCError) {
        try require(target.isFinite && target > 0, "target", "must be finite and > 0 (a ratio of the dense MACs), got \(target)")
        try require(gamma.isFinite && gamma >= 0, "gamma", "must be finite and >= 0, got \(gamma)")
        try require(z.isFinite && z >= 0, "dual", "must be finite and >= 0, got \(z)")
        let arrays = [x.headProbs, x.neuronProbs, x.partProbs, x.rates, x.gateMACs, x.gateProbs]
        for (k, (name, width)) in widths.enumerated() {
            let upper = name == "gate_macs" ? Double.infinity : 1
            for (i, v) in arrays[k].enumerated() {
                try require(v.isFinite && v >= 0 && v <= upper, name,
                            "value at (\(i / width), \(i % width)) is \(v), expected a finite value in [0, \(upper)]")
            }
        }
    }

    /// The loss, F and the expected MACs; writes ∂L/∂(each input) into `gradient`.
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
            relaxed[at(.vDim, l)] = Double(spec.vHeadDim)
            relaxed[at(.neurons, l)] = groupSize * n
            relaxed[at(.attentionGate, l)] = x.partProbs[2 * l] * x.rates[2 * l]
            relaxed[at(.mlpGate, l)] = x.partProbs[2 * l + 1] * x.rates[2 * l + 1]
            relaxed[at(.tokens, l)] = Double(spec.numTokens)
            for o in 0..<options { gateCost[l] += x.gateProbs[l * options + o] * x.gateMACs[l * options + o] }
        }
        var macs = relaxed.withUnsafeBufferPointer { r in
            partial.withUnsafeMutableBufferPointer { model.expected(r, gradient: $0) }
        }
        for l in 0..<depth {
            let alive = 1 - (1 - x.partProbs[2 * l]) * (1 - x.partProbs[2 * l + 1])
            macs += alive * gateCost[l]
        }
        let ratio = macs / denseMACs
        let loss = gamma * (ratio - target) * (ratio - target) + z * (ratio - target)
        // ∂L/∂macs: the chain's common factor.
        let scale = (2 * gamma * (ratio - target) + z) / denseMACs
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
                g.gateMACs[l * options + o] = scale * alive * x.gateProbs[l * options + o]
                g.gateProbs[l * options + o] = scale * alive * x.gateMACs[l * options + o]
            }
        }
        return Value(loss: loss, ratio: ratio, macs: macs)
    }
}
