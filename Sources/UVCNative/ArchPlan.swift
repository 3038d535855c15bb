/// What one transformer block keeps. Counts only: which heads, dims and neurons are
/// kept is the adapter's business; the cost depends on how many.
public struct LayerPlan: Hashable, Sendable {
    /// Kept attention heads (0 only when `attention` is false).
    public var heads: Int
    /// Kept query/key dims of every kept head (one width per layer, as `vDim`). Removing
    /// dim j of a head removes its query row j and key row j: that head's logits lose the
    /// term q_j·k_j, and the softmax keeps the dense model's scale 1/√qkHeadDim.
    public var qkDim: Int
    /// Kept value dims of every kept head (one width per layer, so the layer stays one
    /// rectangular attention call after export).
    public var vDim: Int
    /// Kept MLP hidden neurons (0 only when `mlp` is false).
    public var neurons: Int
    /// Whether the MHSA part (norm1, qkv, attention, proj) runs.
    public var attention: Bool
    /// Whether the MLP part (norm2, fc1, GELU, fc2) runs.
    public var mlp: Bool
    /// Tokens entering the block, prefix tokens included. Fewer tokens in the next layer
    /// means this block drops tokens after its MHSA (see `ArchPlan.validate`).
    public var tokens: Int

    public init(heads: Int, qkDim: Int, vDim: Int, neurons: Int, attention: Bool = true, mlp: Bool = true,
                tokens: Int) {
        self.heads = heads
        self.qkDim = qkDim
        self.vDim = vDim
        self.neurons = neurons
        self.attention = attention
        self.mlp = mlp
        self.tokens = tokens
    }

    /// Names of the integers per layer in the flat encoding, in order.
    public static let fieldNames = ["heads", "qk_dim", "v_dim", "neurons", "attn", "mlp", "tokens"]
    /// Number of integers per layer in the flat encoding.
    public static let encodedCount = 7

    /// Writes the flat encoding (`fieldNames`) into `row` (`encodedCount` values).
    public func encode(into row: UnsafeMutableBufferPointer<Int64>) {
        for (k, v) in [heads, qkDim, vDim, neurons, attention ? 1 : 0, mlp ? 1 : 0, tokens].enumerated() { row[k] = Int64(v) }
    }
}

/// A discrete architecture inside a `ViTSpec`: one `LayerPlan` per block.
public struct ArchPlan: Hashable, Sendable {
    public var layers: [LayerPlan]

    public init(layers: [LayerPlan]) { self.layers = layers }

    /// The dense model: everything kept.
    public static func dense(_ spec: ViTSpec) -> ArchPlan {
        ArchPlan(layers: Array(repeating: LayerPlan(
            heads: spec.numHeads, qkDim: spec.qkHeadDim, vDim: spec.vHeadDim, neurons: spec.mlpHidden,
            tokens: spec.numTokens), count: spec.depth))
    }

    /// Decodes `depth × 7` row-major integers (see `LayerPlan.encodedCount`).
    public init(encoded e: UnsafeBufferPointer<Int64>, spec: ViTSpec) throws(UVCError) {
        let w = LayerPlan.encodedCount
        try require(e.count == spec.depth * w, "plan",
                    "expected shape (\(spec.depth), \(w)) for depth \(spec.depth), got \(e.count) values")
        var layers: [LayerPlan] = []
        layers.reserveCapacity(spec.depth)
        for l in 0..<spec.depth {
            let r = l * w
            for k in 4...5 {
                try require(e[r + k] == 0 || e[r + k] == 1, "plan",
                            "layer \(l): the attention/mlp switch must be 0 or 1, got \(e[r + k])")
            }
            layers.append(LayerPlan(heads: Int(e[r]), qkDim: Int(e[r + 1]), vDim: Int(e[r + 2]), neurons: Int(e[r + 3]),
                                    attention: e[r + 4] == 1, mlp: e[r + 5] == 1, tokens: Int(e[r + 6])))
        }
        self.layers = layers
        try validate(for: spec)
    }

    /// Checks the plan fits inside `spec`: at most the heads, dims and neurons that exist,
    /// at least one of each in a part that runs, and a valid token schedule.
    ///
    /// Token schedule: `tokens[0]` is `spec.numTokens`, and `tokens[l + 1] <= tokens[l]`. A
    /// drop `tokens[l + 1] < tokens[l]` happens inside block `l`, after its MHSA and before its
    /// MLP: the prefix tokens stay, the `k = tokens[l + 1] - prefix - 1` patch tokens with the
    /// highest ranking attention stay (the class token's, or without one the attention each
    /// token receives; see `CostModel`), and the others are fused into one token. So block `l`
    /// must run its MHSA, and `k >= 1` (`tokens[l + 1] >= prefix + 2`): a drop keeps at least
    /// one patch token besides the fused one.
    /// The last block never drops.
    public func validate(for spec: ViTSpec) throws(UVCError) {
        try require(layers.count == spec.depth, "plan",
                    "has \(layers.count) layers, the spec has depth \(spec.depth)")
        for (l, p) in layers.enumerated() {
            try require(p.heads >= 0 && p.heads <= spec.numHeads, "plan",
                        "layer \(l) keeps \(p.heads) heads, expected 0...\(spec.numHeads)")
            try require(p.qkDim >= 0 && p.qkDim <= spec.qkHeadDim, "plan",
                        "layer \(l) keeps \(p.qkDim) query/key dims per head, expected 0...\(spec.qkHeadDim)")
            try require(p.vDim >= 0 && p.vDim <= spec.vHeadDim, "plan",
                        "layer \(l) keeps \(p.vDim) value dims per head, expected 0...\(spec.vHeadDim)")
            try require(p.neurons >= 0 && p.neurons <= spec.mlpHidden, "plan",
                        "layer \(l) keeps \(p.neurons) MLP neurons, expected 0...\(spec.mlpHidden)")
            if p.attention {
                try require(p.heads >= 1 && p.qkDim >= 1 && p.vDim >= 1, "plan",
                            "layer \(l) runs attention with \(p.heads) heads of \(p.qkDim) query/key and \(p.vDim) value dims; a running part keeps at least one of each")
                // A q/k LayerNorm normalises over all of a head's dims: fewer dims change every value.
                try require(!spec.qkNorm || p.qkDim == spec.qkHeadDim, "plan",
                            "layer \(l) keeps \(p.qkDim) of \(spec.qkHeadDim) query/key dims in a model with q/k norms (spec.qk_norm); there every head keeps all of them")
            }
            if p.mlp {
                try require(p.neurons >= 1, "plan",
                            "layer \(l) runs its MLP with 0 neurons; a running part keeps at least one")
            }
            guard l > 0 else {
                try require(p.tokens == spec.numTokens, "plan",
                            "layer 0 takes \(p.tokens) tokens, expected all \(spec.numTokens) (spec.num_tokens); tokens are dropped inside blocks, never before the first")
                continue
            }
            let before = layers[l - 1].tokens
            try require(p.tokens <= before, "plan",
                        "layer \(l) takes \(p.tokens) tokens, more than the \(before) of layer \(l - 1); dropped tokens never come back")
            if p.tokens < before {
                try require(layers[l - 1].attention, "plan",
                            "layer \(l - 1) drops tokens (\(before) -> \(p.tokens)) with its attention off; a block drops tokens by its attention, so its MHSA must run")
                try require(p.tokens >= spec.prefixTokens + 2, "plan",
                            "layer \(l - 1) drops tokens to \(p.tokens), expected at least \(spec.prefixTokens + 2) (the \(spec.prefixTokens) prefix tokens, one kept patch token and the fused token)")
            }
        }
    }
}
