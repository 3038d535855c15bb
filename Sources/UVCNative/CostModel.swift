/// The one cost model: MACs of a ViT for any architecture inside its spec.
///
/// The same polynomial serves both uses. With integer counts and 0/1 gates it is the
/// exact MAC count of the physically exported model (`exact`); with expected counts and
/// gate probabilities it is the expected cost used by the budget term, whose exact
/// gradient `expected(_:gradient:)` returns. Costs are in MACs; FLOPs are 2 × MACs.
///
/// Per block with N tokens, width D, h heads of qk width q and value width v, m MLP
/// neurons, MHSA gate a and MLP gate g:
///
///     a · [ N·D·h·(2q+v) + h·N²·q + h·N²·v + N·h·v·D + ln·N·D + sm·h·N² + b·(N·h·(2q+v) + N·D) ]
///   + g · [ 2·N·D·m + ln·N·D + ge·N·m + b·(N·m + N·D) ]
///
/// (qkv, QKᵀ, AV, proj, norm1, softmax, biases | fc1 + fc2, norm2, GELU, biases), plus the
/// patch embedding P·D·C·p² (+ b·P·D), the final norm ln·N_last·D and the classifier
/// head(s) c·(D·K + b·K), where ln, sm, ge, b, c come from the `CostConvention`.
public struct CostModel: Sendable {
    public let spec: ViTSpec
    public let convention: CostConvention

    public init(spec: ViTSpec, convention: CostConvention) {
        self.spec = spec
        self.convention = convention
    }

    /// Per-layer components, in the order of the breakdown columns.
    public enum Component: Int, CaseIterable, Sendable {
        case qkv, attnQK, attnAV, proj, fc1, fc2, norm1, norm2, softmax, gelu, bias
    }

    /// Whole-model components outside the blocks.
    public enum GlobalComponent: Int, CaseIterable, Sendable {
        case patchEmbed, finalNorm, head
    }

    /// One block's continuous inputs.
    public struct LayerInputs: Sendable {
        public var heads, vDim, neurons, attentionGate, mlpGate, tokens: Double
        public init(heads: Double, vDim: Double, neurons: Double, attentionGate: Double, mlpGate: Double, tokens: Double) {
            self.heads = heads
            self.vDim = vDim
            self.neurons = neurons
            self.attentionGate = attentionGate
            self.mlpGate = mlpGate
            self.tokens = tokens
        }

        public init(_ p: LayerPlan) {
            self.init(heads: Double(p.heads), vDim: Double(p.vDim), neurons: Double(p.neurons),
                      attentionGate: p.attention ? 1 : 0, mlpGate: p.mlp ? 1 : 0, tokens: Double(p.tokens))
        }
    }

    /// MACs of the parts outside the blocks that do not depend on the plan.
    public var patchEmbedMACs: Double {
        let patches = Double(spec.numPatches), d = Double(spec.embedDim)
        let kernel = Double(spec.inChannels * spec.patchSize * spec.patchSize)
        return patches * d * kernel + (convention.bias ? patches * d : 0)
    }

    public var headMACs: Double {
        guard convention.head else { return 0 }
        let d = Double(spec.embedDim), k = Double(spec.numClasses)
        return Double(spec.classifierHeads) * (d * k + (convention.bias ? k : 0))
    }

    /// The final LayerNorm over the tokens leaving the last block.
    public func finalNormMACs(tokens: Double) -> Double {
        convention.layerNormPerElement * tokens * Double(spec.embedDim)
    }

    /// Writes the 11 components of one block into `out` (indexed by `Component`).
    public func layerBreakdown(_ x: LayerInputs, into out: UnsafeMutableBufferPointer<Double>) {
        let d = Double(spec.embedDim), q = Double(spec.qkHeadDim)
        let ln = convention.layerNormPerElement
        let n = x.tokens, h = x.heads, v = x.vDim, m = x.neurons
        let a = x.attentionGate, g = x.mlpGate
        out[Component.qkv.rawValue] = a * n * d * h * (2 * q + v)
        out[Component.attnQK.rawValue] = a * h * n * n * q
        out[Component.attnAV.rawValue] = a * h * n * n * v
        out[Component.proj.rawValue] = a * n * h * v * d
        out[Component.fc1.rawValue] = g * n * d * m
        out[Component.fc2.rawValue] = g * n * m * d
        out[Component.norm1.rawValue] = a * ln * n * d
        out[Component.norm2.rawValue] = g * ln * n * d
        out[Component.softmax.rawValue] = convention.softmax ? a * h * n * n : 0
        out[Component.gelu.rawValue] = convention.gelu ? g * n * m : 0
        out[Component.bias.rawValue] = convention.bias
            ? a * (n * h * (2 * q + v) + n * d) + g * (n * m + n * d) : 0
    }

    /// Exact MACs of `plan`: per-layer components into `layers` (depth × 11, row-major)
    /// and the global ones into `globals` (3). Returns the total.
    ///
    /// Precondition: `plan` was validated for `spec`; buffer sizes match.
    @discardableResult
    public func exact(_ plan: ArchPlan, layers: UnsafeMutableBufferPointer<Double>,
                      globals: UnsafeMutableBufferPointer<Double>) -> Double {
        let width = Component.allCases.count
        precondition(layers.count == plan.layers.count * width && globals.count == GlobalComponent.allCases.count)
        var total = 0.0
        for (l, p) in plan.layers.enumerated() {
            let row = UnsafeMutableBufferPointer(rebasing: layers[(l * width)..<((l + 1) * width)])
            layerBreakdown(LayerInputs(p), into: row)
            for c in row { total += c }
        }
        globals[GlobalComponent.patchEmbed.rawValue] = patchEmbedMACs
        globals[GlobalComponent.finalNorm.rawValue] = finalNormMACs(tokens: Double(plan.layers.last?.tokens ?? spec.numTokens))
        globals[GlobalComponent.head.rawValue] = headMACs
        for c in globals { total += c }
        return total
    }

    /// Exact total MACs of `plan`.
    public func exactTotal(_ plan: ArchPlan) -> Double {
        let width = Component.allCases.count
        var layers = [Double](repeating: 0, count: plan.layers.count * width)
        var globals = [Double](repeating: 0, count: GlobalComponent.allCases.count)
        return layers.withUnsafeMutableBufferPointer { lb in
            globals.withUnsafeMutableBufferPointer { gb in exact(plan, layers: lb, globals: gb) }
        }
    }

    /// Expected MACs with continuous inputs and its gradient.
    ///
    /// `inputs` and `gradient` are `RelaxedField.allCases.count × depth`, row-major: row k holds
    /// field k for every layer. On return `gradient[k][l]` is ∂cost/∂inputs[k][l].
    ///
    /// Precondition: `inputs` passed `validateRelaxed`; both buffers have the same size.
    public func expected(_ inputs: UnsafeBufferPointer<Double>, gradient: UnsafeMutableBufferPointer<Double>) -> Double {
        let depth = spec.depth
        precondition(inputs.count == RelaxedField.allCases.count * depth && gradient.count == inputs.count)
        let d = Double(spec.embedDim), q = Double(spec.qkHeadDim)
        let ln = convention.layerNormPerElement
        let sm: Double = convention.softmax ? 1 : 0
        let ge: Double = convention.gelu ? 1 : 0
        let b: Double = convention.bias ? 1 : 0
        var total = patchEmbedMACs + headMACs
        for l in 0..<depth {
            let h = inputs[RelaxedField.heads.rawValue * depth + l]
            let v = inputs[RelaxedField.vDim.rawValue * depth + l]
            let m = inputs[RelaxedField.neurons.rawValue * depth + l]
            let a = inputs[RelaxedField.attentionGate.rawValue * depth + l]
            let g = inputs[RelaxedField.mlpGate.rawValue * depth + l]
            let n = inputs[RelaxedField.tokens.rawValue * depth + l]
            let qkvWidth = 2 * q + v
            let attn = n * d * h * qkvWidth + h * n * n * (q + v) + n * h * v * d + ln * n * d
                + sm * h * n * n + b * (n * h * qkvWidth + n * d)
            let mlp = 2 * n * d * m + ln * n * d + ge * n * m + b * (n * m + n * d)
            total += a * attn + g * mlp
            gradient[RelaxedField.heads.rawValue * depth + l] =
                a * (n * d * qkvWidth + n * n * (q + v) + n * v * d + sm * n * n + b * n * qkvWidth)
            gradient[RelaxedField.vDim.rawValue * depth + l] = a * (n * d * h + h * n * n + n * h * d + b * n * h)
            gradient[RelaxedField.neurons.rawValue * depth + l] = g * (2 * n * d + ge * n + b * n)
            gradient[RelaxedField.attentionGate.rawValue * depth + l] = attn
            gradient[RelaxedField.mlpGate.rawValue * depth + l] = mlp
            gradient[RelaxedField.tokens.rawValue * depth + l] =
                a * (d * h * qkvWidth + 2 * h * n * (q + v) + h * v * d + ln * d + 2 * sm * h * n
                     + b * (h * qkvWidth + d))
                + g * (2 * d * m + ln * d + ge * m + b * (m + d))
        }
        let last = RelaxedField.tokens.rawValue * depth + depth - 1
        total += finalNormMACs(tokens: inputs[last])
        gradient[last] += ln * d
        return total
    }

    /// Checks the continuous inputs: finite, non-negative, at most what the spec has,
    /// gates in [0, 1].
    public func validateRelaxed(_ inputs: UnsafeBufferPointer<Double>) throws(UVCError) {
        let depth = spec.depth
        try require(inputs.count == RelaxedField.allCases.count * depth, "x",
                    "expected shape (\(RelaxedField.allCases.count), \(depth)), got \(inputs.count) values")
        for field in RelaxedField.allCases {
            let upper = field.upperBound(spec)
            for l in 0..<depth {
                let value = inputs[field.rawValue * depth + l]
                try require(value.isFinite && value >= 0 && value <= upper, "x",
                            "\(field.name)[\(l)] = \(value), expected a finite value in [0, \(upper)]")
            }
        }
    }
}

/// Rows of the relaxed-cost input: one continuous quantity per layer each.
public enum RelaxedField: Int, CaseIterable, Sendable {
    /// Expected kept heads, in [0, numHeads].
    case heads
    /// Expected kept value dims per head, in [0, vHeadDim].
    case vDim
    /// Expected kept MLP neurons, in [0, mlpHidden].
    case neurons
    /// Probability that the MHSA part runs.
    case attentionGate
    /// Probability that the MLP part runs.
    case mlpGate
    /// Expected tokens entering the block, in [0, numTokens].
    case tokens

    public var name: String {
        switch self {
        case .heads: "heads"
        case .vDim: "v_dim"
        case .neurons: "neurons"
        case .attentionGate: "attn_gate"
        case .mlpGate: "mlp_gate"
        case .tokens: "tokens"
        }
    }

    public func upperBound(_ spec: ViTSpec) -> Double {
        switch self {
        case .heads: Double(spec.numHeads)
        case .vDim: Double(spec.vHeadDim)
        case .neurons: Double(spec.mlpHidden)
        case .attentionGate, .mlpGate: 1
        case .tokens: Double(spec.numTokens)
        }
    }
}
