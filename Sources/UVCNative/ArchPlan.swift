/// What one transformer block keeps. Counts only: which heads, dims and neurons are
/// kept is the adapter's business; the cost depends on how many.
public struct LayerPlan: Hashable, Sendable {
    /// Kept attention heads (0 only when `attention` is false).
    public var heads: Int
    /// Kept value dims of every kept head (one width per layer, so the layer stays one
    /// rectangular attention call after export).
    public var vDim: Int
    /// Kept MLP hidden neurons (0 only when `mlp` is false).
    public var neurons: Int
    /// Whether the MHSA part (norm1, qkv, attention, proj) runs.
    public var attention: Bool
    /// Whether the MLP part (norm2, fc1, GELU, fc2) runs.
    public var mlp: Bool
    /// Tokens entering the block, prefix tokens included.
    public var tokens: Int

    public init(heads: Int, vDim: Int, neurons: Int, attention: Bool = true, mlp: Bool = true, tokens: Int) {
        self.heads = heads
        self.vDim = vDim
        self.neurons = neurons
        self.attention = attention
        self.mlp = mlp
        self.tokens = tokens
    }

    /// Number of integers per layer in the flat encoding
    /// `[heads, vDim, neurons, attention, mlp, tokens]`.
    public static let encodedCount = 6
}

/// A discrete architecture inside a `ViTSpec`: one `LayerPlan` per block.
public struct ArchPlan: Hashable, Sendable {
    public var layers: [LayerPlan]

    public init(layers: [LayerPlan]) { self.layers = layers }

    /// The dense model: everything kept.
    public static func dense(_ spec: ViTSpec) -> ArchPlan {
        ArchPlan(layers: Array(repeating: LayerPlan(
            heads: spec.numHeads, vDim: spec.vHeadDim, neurons: spec.mlpHidden,
            tokens: spec.numTokens), count: spec.depth))
    }

    /// Decodes `depth × 6` row-major integers (see `LayerPlan.encodedCount`).
    public init(encoded e: UnsafeBufferPointer<Int64>, spec: ViTSpec) throws(UVCError) {
        let w = LayerPlan.encodedCount
        try require(e.count == spec.depth * w, "plan",
                    "expected shape (\(spec.depth), \(w)) for depth \(spec.depth), got \(e.count) values")
        var layers: [LayerPlan] = []
        layers.reserveCapacity(spec.depth)
        for l in 0..<spec.depth {
            let r = l * w
            for k in 3...4 {
                try require(e[r + k] == 0 || e[r + k] == 1, "plan",
                            "layer \(l): the attention/mlp switch must be 0 or 1, got \(e[r + k])")
            }
            layers.append(LayerPlan(heads: Int(e[r]), vDim: Int(e[r + 1]), neurons: Int(e[r + 2]),
                                    attention: e[r + 3] == 1, mlp: e[r + 4] == 1, tokens: Int(e[r + 5])))
        }
        self.layers = layers
        try validate(for: spec)
    }

    /// Checks the plan fits inside `spec`: at most the heads, dims and neurons that exist,
    /// at least one of each in a part that runs, and a token count that never grows.
    public func validate(for spec: ViTSpec) throws(UVCError) {
        try require(layers.count == spec.depth, "plan",
                    "has \(layers.count) layers, the spec has depth \(spec.depth)")
        var previousTokens = spec.numTokens
        for (l, p) in layers.enumerated() {
            try require(p.heads >= 0 && p.heads <= spec.numHeads, "plan",
                        "layer \(l) keeps \(p.heads) heads, expected 0...\(spec.numHeads)")
            try require(p.vDim >= 0 && p.vDim <= spec.vHeadDim, "plan",
                        "layer \(l) keeps \(p.vDim) value dims per head, expected 0...\(spec.vHeadDim)")
            try require(p.neurons >= 0 && p.neurons <= spec.mlpHidden, "plan",
                        "layer \(l) keeps \(p.neurons) MLP neurons, expected 0...\(spec.mlpHidden)")
            if p.attention {
                try require(p.heads >= 1 && p.vDim >= 1, "plan",
                            "layer \(l) runs attention with \(p.heads) heads of \(p.vDim) value dims; a running part keeps at least one of each")
            }
            if p.mlp {
                try require(p.neurons >= 1, "plan",
                            "layer \(l) runs its MLP with 0 neurons; a running part keeps at least one")
            }
            try require(p.tokens >= spec.prefixTokens + 1 && p.tokens <= previousTokens, "plan",
                        "layer \(l) takes \(p.tokens) tokens, expected \(spec.prefixTokens + 1)...\(previousTokens) (prefix tokens plus at least one patch, never more than the layer before)")
            previousTokens = p.tokens
        }
    }
}
