/// What the cost model counts besides the matrix products. Everything is in MACs
/// (multiply-accumulates); FLOPs are 2 × MACs and are derived by the caller.
///
/// Attention matmuls (QKᵀ and AV) are always counted: counters that skip them under-count
/// ViTs by 7–15 %.
public struct CostConvention: Hashable, Sendable {
    /// MACs charged per element of a LayerNorm input; 0 turns norms off. fvcore charges 5
    /// per element for an affine LayerNorm.
    public var layerNormPerElement: Double
    /// One MAC per element of every attention softmax.
    public var softmax: Bool
    /// One MAC per element of every MLP activation (GELU, QuickGELU, SiLU).
    public var gelu: Bool
    /// One MAC per output element of every layer with a bias.
    public var bias: Bool
    /// The classifier head(s) on the pooled token(s).
    public var head: Bool
    /// One MAC per element averaged by average pooling (adds no counter sees as a product).
    public var pool: Bool

    public init(layerNormPerElement: Double = 0, softmax: Bool = false, gelu: Bool = false,
                bias: Bool = false, head: Bool = false, pool: Bool = false) {
        self.layerNormPerElement = layerNormPerElement
        self.softmax = softmax
        self.gelu = gelu
        self.bias = bias
        self.head = head
        self.pool = pool
    }

    /// The UVC paper's convention (its `flops_with_mhsa=1` path): linear layers, attention
    /// matmuls and patch embedding only.
    public static let uvc = CostConvention()
    /// What fvcore reports on a timm ViT with fused attention off: adds affine LayerNorm at
    /// 5 MACs per element and the classifier head.
    public static let fvcore = CostConvention(layerNormPerElement: 5, head: true)

    /// Names of the doubles of the flat encoding, in order.
    public static let fieldNames = ["layer_norm", "softmax", "gelu", "bias", "head", "pool"]
    /// Number of doubles in the flat encoding.
    public static let encodedCount = 6

    public init(encoded e: UnsafeBufferPointer<Double>) throws(UVCError) {
        try require(e.count == CostConvention.encodedCount, "convention",
                    "expected \(CostConvention.encodedCount) values, got \(e.count)")
        try require(e[0].isFinite && e[0] >= 0, "convention",
                    "the LayerNorm MACs per element must be finite and >= 0, got \(e[0])")
        for k in 1..<CostConvention.encodedCount {
            try require(e[k] == 0 || e[k] == 1, "convention", "switch \(k) must be 0 or 1, got \(e[k])")
        }
        self.init(layerNormPerElement: e[0], softmax: e[1] == 1, gelu: e[2] == 1,
                  bias: e[3] == 1, head: e[4] == 1, pool: e[5] == 1)
    }
}
