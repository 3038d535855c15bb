/// The one cost model: MACs of a ViT for any architecture inside its spec.
///
/// The same polynomial serves both uses. With integer counts and 0/1 gates it is the
/// exact MAC count of the physically exported model (`exact`); with expected counts and
/// gate probabilities it is the expected cost used by the budget term, whose exact
/// gradient `expected(_:gradient:)` returns. Costs are in MACs; FLOPs are 2 × MACs.
///
/// Per block with N tokens in (`tokens[l]`), N' tokens out (`tokens[l+1]`, N for the last
/// block), width D, h heads of query/key width q (`LayerPlan.qkDim`) and value width v, m MLP units, MHSA gate a,
/// MLP gate g, r = [N' < N] (the block drops tokens), u = 2 for a gated MLP (two fc1 rows
/// per unit) and 1 otherwise, and k = [qk_norm]:
///
///     a · [ N·D·h·(2q+v) + h·N²·q + h·N²·v + N·h·v·D + ln·N·D + sm·h·N² + b·(N·h·(2q+v) + N·D)
///           + k·ln·2·N·h·q ]
///   + a · r · [ ρ·h·N·q + (N − N' + 1)·D + sm·ρ·h·N ]
///   + g · [ (u+1)·N'·D·m + ln·N'·D + ge·N'·m + b·(u·N'·m + N'·D) ]
///
/// (qkv, QKᵀ, AV, proj, norm1, softmax, biases, the q and k norms | token fusion: the ranking
/// attention's ρ rows q·Kᵀ, the weighted sum of the N − N' + 1 dropped tokens, the rows'
/// softmax | fc1 + fc2, norm2, activation, biases: the MLP runs after the drop, on N'
/// tokens; a gated MLP's product of gate and value is element-wise and counts under no
/// convention), plus the patch embedding P·D·C·p² (+ b·P·D), the pre-norm ln·N₀·D, the final
/// norm (ln·N_last·D over the tokens, or ln·c·D on the c pooled vectors with fc_norm), the
/// pooling and the classifier head(s) c·(D·K + b·K), where ln, sm, ge, b, c come from the
/// `CostConvention`. Pooling: none for the class token; pl·(N_last − prefix)·D adds for the
/// average; for the attention-pool head with H = numHeads heads and M = mlpHidden, one
/// latent query: D·D (q) + 2·N_last·D² (kv) + 2·N_last·D (QKᵀ, AV) + D·D (proj) + 2·D·M (MLP)
/// + ln·D + sm·H·N_last + ge·M + b·(3·D + 2·N_last·D + M). The fusion matmuls count under
/// every convention; ranking, head and query averaging and renormalising the weights are
/// element-wise and count under none.
///
/// A dropping block ranks tokens by the class token's attention row (ρ = 1) or, in a model
/// without a class token (`ViTSpec.classToken`), by the attention each token receives, every
/// query's row averaged over the queries (ρ = N: the whole map again, since SDPA does not
/// return it).
public struct CostModel: Sendable {
    public let spec: ViTSpec
    public let convention: CostConvention

    public init(spec: ViTSpec, convention: CostConvention) {
        self.spec = spec
        self.convention = convention
    }

    /// Whether a dropping block ranks tokens by the class token's row alone (ρ = 1) rather
    /// than by every query's row (ρ = N); see the type's documentation.
    public var ranksByClassToken: Bool { spec.classToken }

    /// Per-layer components, in the order of the breakdown columns.
    public enum Component: Int, CaseIterable, Sendable {
        case qkv, attnQK, attnAV, proj, fc1, fc2, norm1, norm2, softmax, gelu, bias
        /// Token fusion in a block that drops tokens: ranking attention rows and weighted sum.
        case fuse
        /// The LayerNorms over each head's queries and keys (`ViTSpec.qkNorm`).
        case qkNorm

        /// The names the Python API uses, in order.
        public static let names = ["qkv", "attn_qk", "attn_av", "proj", "fc1", "fc2", "norm1", "norm2", "softmax",
                                   "gelu", "bias", "fuse", "qk_norm"]
    }

    /// Whole-model components outside the blocks.
    public enum GlobalComponent: Int, CaseIterable, Sendable {
        case patchEmbed, finalNorm, head
        /// The LayerNorm before the first block (`ViTSpec.preNorm`).
        case preNorm
        /// Average pooling or the attention-pool head (`ViTSpec.pool`).
        case pool

        public static let names = ["patch_embed", "final_norm", "head", "pre_norm", "pool"]
    }

    /// One block's continuous inputs. `tokens` enter the block; `tokensOut` leave it (and
    /// feed its MLP): fewer out than in means the block drops tokens after its MHSA.
    public struct LayerInputs: Sendable {
        public var heads, qkDim, vDim, neurons, attentionGate, mlpGate, tokens, tokensOut: Double
        public init(heads: Double, qkDim: Double, vDim: Double, neurons: Double, attentionGate: Double,
                    mlpGate: Double, tokens: Double, tokensOut: Double) {
            self.heads = heads
            self.qkDim = qkDim
            self.vDim = vDim
            self.neurons = neurons
            self.attentionGate = attentionGate
            self.mlpGate = mlpGate
            self.tokens = tokens
            self.tokensOut = tokensOut
        }

        /// Block `p` followed by a block taking `tokensOut` tokens (`p.tokens` for the last block).
        public init(_ p: LayerPlan, tokensOut: Int) {
            self.init(heads: Double(p.heads), qkDim: Double(p.qkDim), vDim: Double(p.vDim), neurons: Double(p.neurons),
                      attentionGate: p.attention ? 1 : 0, mlpGate: p.mlp ? 1 : 0, tokens: Double(p.tokens),
                      tokensOut: Double(tokensOut))
        }
    }

    /// MACs of the parts outside the blocks that do not depend on the plan.
    public var patchEmbedMACs: Double {
        let patches = Double(spec.numPatches), d = Double(spec.embedDim)
        let kernel = Double(spec.inChannels * spec.patchSize * spec.patchSize)
        // A pre-norm model's patch embedding has no bias (timm's CLIP layout, see `ViTSpec.preNorm`).
        return patches * d * kernel + (convention.bias && !spec.preNorm ? patches * d : 0)
    }

    public var headMACs: Double {
        guard convention.head else { return 0 }
        let d = Double(spec.embedDim), k = Double(spec.numClasses)
        return Double(spec.classifierHeads) * (d * k + (convention.bias ? k : 0))
    }

    /// The pre-norm over all tokens entering the first block (none without `spec.preNorm`).
    public var preNormMACs: Double {
        spec.preNorm ? convention.layerNormPerElement * Double(spec.numTokens * spec.embedDim) : 0
    }

    /// The final LayerNorm: over the `tokens` leaving the last block, or with `spec.fcNorm`
    /// over the pooled vector(s). Returns the MACs and their derivative in `tokens`.
    public func finalNormMACs(tokens: Double) -> (macs: Double, perToken: Double) {
        let ln = convention.layerNormPerElement, d = Double(spec.embedDim)
        return spec.fcNorm ? (ln * Double(spec.classifierHeads) * d, 0) : (ln * tokens * d, ln * d)
    }

    /// The pooling of the `tokens` leaving the last block (see the type's documentation).
    /// Returns the MACs and their derivative in `tokens`.
    public func poolMACs(tokens n: Double) -> (macs: Double, perToken: Double) {
        let d = Double(spec.embedDim)
        switch spec.pool {
        case .token:
            return (0, 0)
        case .avg:
            let pl: Double = convention.pool ? 1 : 0
            return (pl * (n - Double(spec.prefixTokens)) * d, pl * d)
        case .map:
            let ln = convention.layerNormPerElement, m = Double(spec.mlpHidden), h = Double(spec.numHeads)
            let sm: Double = convention.softmax ? 1 : 0
            let ge: Double = convention.gelu ? 1 : 0
            let b: Double = convention.bias ? 1 : 0
            let fixed = 2 * d * d + 2 * d * m + ln * d + ge * m + b * (3 * d + m)
            let perToken = 2 * d * d + 2 * d + sm * h + b * 2 * d
            return (fixed + perToken * n, perToken)
        }
    }

    /// Writes the components of one block into `out` (indexed by `Component`). The
    /// softmax of the ranking attention rows of a dropping block counts under `softmax`.
    public func layerBreakdown(_ x: LayerInputs, into out: UnsafeMutableBufferPointer<Double>) {
        let d = Double(spec.embedDim), q = x.qkDim
        let ln = convention.layerNormPerElement
        let n = x.tokens, n2 = x.tokensOut, h = x.heads, v = x.vDim, m = x.neurons
        let a = x.attentionGate, g = x.mlpGate
        let r: Double = n2 < n ? 1 : 0
        let rows = ranksByClassToken ? 1 : n
        let u: Double = spec.gatedMLP ? 2 : 1
        out[Component.qkv.rawValue] = a * n * d * h * (2 * q + v)
        out[Component.attnQK.rawValue] = a * h * n * n * q
        out[Component.attnAV.rawValue] = a * h * n * n * v
        out[Component.proj.rawValue] = a * n * h * v * d
        out[Component.fc1.rawValue] = g * u * n2 * d * m
        out[Component.fc2.rawValue] = g * n2 * m * d
        out[Component.norm1.rawValue] = a * ln * n * d
        out[Component.norm2.rawValue] = g * ln * n2 * d
        out[Component.softmax.rawValue] = convention.softmax ? a * h * n * (n + r * rows) : 0
        out[Component.gelu.rawValue] = convention.gelu ? g * n2 * m : 0
        out[Component.bias.rawValue] = convention.bias
            ? a * (n * h * (2 * q + v) + n * d) + g * (u * n2 * m + n2 * d) : 0
        out[Component.fuse.rawValue] = a * r * (rows * h * n * q + (n - n2 + 1) * d)
        out[Component.qkNorm.rawValue] = spec.qkNorm ? a * ln * 2 * n * h * q : 0
    }

    /// Exact MACs of `plan`: per-layer components into `layers` (depth × `Component` count, row-major)
    /// and the global ones into `globals` (`GlobalComponent`). Returns the total.
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
            let tokensOut = l + 1 < plan.layers.count ? plan.layers[l + 1].tokens : p.tokens
            layerBreakdown(LayerInputs(p, tokensOut: tokensOut), into: row)
            for c in row { total += c }
        }
        globals[GlobalComponent.patchEmbed.rawValue] = patchEmbedMACs
        let last = Double(plan.layers.last?.tokens ?? spec.numTokens)
        globals[GlobalComponent.finalNorm.rawValue] = finalNormMACs(tokens: last).macs
        globals[GlobalComponent.head.rawValue] = headMACs
        globals[GlobalComponent.preNorm.rawValue] = preNormMACs
        globals[GlobalComponent.pool.rawValue] = poolMACs(tokens: last).macs
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
    /// The formula is the exact one with continuous values: `tokens[l + 1]` (also) sizes block
    /// `l`'s MLP and fusion, and the drop indicator r = [tokens[l+1] < tokens[l]] is taken as
    /// locally constant, so the cost is piecewise smooth and the gradient exact wherever every
    /// `tokens[l + 1]` differs from `tokens[l]`. The schedule is taken as given: keeping
    /// `tokens[l + 1] = tokens[l]` where the MHSA may not run is the caller's business.
    ///
    /// Precondition: `inputs` passed `validateRelaxed`; both buffers have the same size.
    public func expected(_ inputs: UnsafeBufferPointer<Double>, gradient: UnsafeMutableBufferPointer<Double>) -> Double {
        let depth = spec.depth
        precondition(inputs.count == RelaxedField.allCases.count * depth && gradient.count == inputs.count)
        let d = Double(spec.embedDim)
        let ln = convention.layerNormPerElement
        let sm: Double = convention.softmax ? 1 : 0
        let ge: Double = convention.gelu ? 1 : 0
        let b: Double = convention.bias ? 1 : 0
        let u: Double = spec.gatedMLP ? 2 : 1
        let k: Double = spec.qkNorm ? 2 * ln : 0
        let classRows = ranksByClassToken
        var total = patchEmbedMACs + headMACs + preNormMACs
        let tokenRow = RelaxedField.tokens.rawValue * depth
        // Block l's cost depends on tokens[l] and tokens[l + 1]: that row accumulates.
        for l in 0..<depth { gradient[tokenRow + l] = 0 }
        for l in 0..<depth {
            let h = inputs[RelaxedField.heads.rawValue * depth + l]
            let q = inputs[RelaxedField.qkDim.rawValue * depth + l]
            let v = inputs[RelaxedField.vDim.rawValue * depth + l]
            let m = inputs[RelaxedField.neurons.rawValue * depth + l]
            let a = inputs[RelaxedField.attentionGate.rawValue * depth + l]
            let g = inputs[RelaxedField.mlpGate.rawValue * depth + l]
            let n = inputs[tokenRow + l]
            let out = l + 1 < depth ? tokenRow + l + 1 : tokenRow + l
            let n2 = inputs[out]
            let r: Double = n2 < n ? 1 : 0
            // ρ ranking rows and dρ/dn·n + ρ, the factor of the rows' terms in the token derivative.
            let rows = classRows ? 1 : n, rowsSlope = classRows ? 1 : 2 * n
            let qkvWidth = 2 * q + v
            let attn = n * d * h * qkvWidth + h * n * n * (q + v) + n * h * v * d + ln * n * d
                + sm * h * n * n + b * (n * h * qkvWidth + n * d) + k * n * h * q
            let fuse = r * (rows * h * n * q + (n - n2 + 1) * d + sm * rows * h * n)
            let mlp = (u + 1) * n2 * d * m + ln * n2 * d + ge * n2 * m + b * (u * n2 * m + n2 * d)
            total += a * (attn + fuse) + g * mlp
            gradient[RelaxedField.heads.rawValue * depth + l] =
                a * (n * d * qkvWidth + n * n * (q + v) + n * v * d + sm * n * n + b * n * qkvWidth + k * n * q
                     + r * rows * (n * q + sm * n))
            gradient[RelaxedField.qkDim.rawValue * depth + l] =
                a * (2 * n * d * h + h * n * n + 2 * b * n * h + k * n * h + r * rows * h * n)
            gradient[RelaxedField.vDim.rawValue * depth + l] = a * (n * d * h + h * n * n + n * h * d + b * n * h)
            gradient[RelaxedField.neurons.rawValue * depth + l] = g * ((u + 1) * n2 * d + ge * n2 + b * u * n2)
            gradient[RelaxedField.attentionGate.rawValue * depth + l] = attn + fuse
            gradient[RelaxedField.mlpGate.rawValue * depth + l] = mlp
            gradient[tokenRow + l] +=
                a * (d * h * qkvWidth + 2 * h * n * (q + v) + h * v * d + ln * d + 2 * sm * h * n
                     + b * (h * qkvWidth + d) + k * h * q + r * (rowsSlope * h * (q + sm) + d))
            gradient[out] += g * ((u + 1) * d * m + ln * d + ge * m + b * (u * m + d)) - a * r * d
        }
        let last = tokenRow + depth - 1
        let norm = finalNormMACs(tokens: inputs[last]), pool = poolMACs(tokens: inputs[last])
        total += norm.macs + pool.macs
        gradient[last] += norm.perToken + pool.perToken
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
    /// Expected kept query/key dims per head, in [0, qkHeadDim].
    case qkDim
    /// Expected kept value dims per head, in [0, vHeadDim].
    case vDim
    /// Expected kept MLP neurons, in [0, mlpHidden].
    case neurons
    /// Probability that the MHSA part runs.
    case attentionGate
    /// Probability that the MLP part runs.
    case mlpGate
    /// Expected tokens entering the block, in [0, numTokens]; `tokens[l + 1]` is also what
    /// block `l`'s MLP sees (see `CostModel`).
    case tokens

    public var name: String {
        switch self {
        case .heads: "heads"
        case .qkDim: "qk_dim"
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
        case .qkDim: Double(spec.qkHeadDim)
        case .vDim: Double(spec.vHeadDim)
        case .neurons: Double(spec.mlpHidden)
        case .attentionGate, .mlpGate: 1
        case .tokens: Double(spec.numTokens)
        }
    }
}
