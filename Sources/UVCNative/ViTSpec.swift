/// The shape of a plain Vision Transformer (ViT / DeiT / DeiT-distilled).
///
/// A `ViTSpec` is the dense architecture; an `ArchPlan` says what of it is kept.
/// All sizes are counts (not bytes); images are `imageHeight × imageWidth` pixels
/// cut into non-overlapping `patchSize × patchSize` patches.
public struct ViTSpec: Hashable, Sendable {
    public var depth: Int
    public var embedDim: Int
    public var numHeads: Int
    /// Width of one head's queries and keys.
    public var qkHeadDim: Int
    /// Width of one head's values (equals `qkHeadDim` in timm, may differ after pruning).
    public var vHeadDim: Int
    public var mlpHidden: Int
    public var patchSize: Int
    public var imageHeight: Int
    public var imageWidth: Int
    public var inChannels: Int
    /// Tokens prepended to the patches: 1 (class) for ViT/DeiT, 2 (class, distillation) for distilled DeiT.
    public var prefixTokens: Int
    public var numClasses: Int
    /// Classifier heads applied to one token each: 1, or 2 for distilled DeiT.
    public var classifierHeads: Int
    /// A LayerNorm on the tokens after the position embedding, before the first block (timm's
    /// `pre_norm`, as in CLIP ViTs); timm then builds the patch embedding without a bias.
    public var preNorm: Bool
    /// How the classifier reads the tokens leaving the last block.
    public var pool: Pool
    /// A LayerNorm on the pooled vector(s) instead of over all tokens (timm's `fc_norm`):
    /// the final norm then normalises `classifierHeads` vectors, not every token.
    public var fcNorm: Bool
    /// A LayerNorm over each head's queries and keys (timm's `qk_norm`; one norm shared by all
    /// heads, so a removed head takes nothing of it with it).
    public var qkNorm: Bool
    /// A gated MLP (timm's `SwiGLU` / `GluMlp`): each hidden unit is a pair of fc1 rows, one
    /// gate and one value, multiplied after the activation. `mlpHidden` counts the units.
    public var gatedMLP: Bool
    /// Whether the first prefix token is a class token (timm's `class_token`). A block that drops
    /// tokens ranks them by its attention row; without one (average or attention-pool pooling,
    /// register tokens only) by the attention each token receives, averaged over the queries.
    public var classToken: Bool

    /// The classifier's pooling (timm's `global_pool`).
    public enum Pool: Int, CaseIterable, Sendable {
        /// The prefix token(s): class (and distillation) token.
        case token
        /// The mean over the non-prefix tokens.
        case avg
        /// timm's attention-pool head (`AttentionPoolLatent`, SigLIP): one learned query attends
        /// to every token with `numHeads` heads, then an MLP of `mlpHidden` units. Never pruned.
        case map

        public static let names = ["token", "avg", "map"]
    }

    /// Names of the fields of the flat encoding used across the C ABI, in order.
    public static let fieldNames = ["depth", "embed_dim", "num_heads", "qk_head_dim", "v_head_dim", "mlp_hidden",
                                    "patch_size", "image_height", "image_width", "in_channels", "prefix_tokens",
                                    "num_classes", "classifier_heads", "pre_norm", "pool", "fc_norm",
                                    "qk_norm", "gated_mlp", "class_token"]
    /// Number of fields in the flat encoding.
    public static let encodedCount = 19
    /// The largest size of any field: it keeps every product of the cost model far inside Int64.
    public static let maxSize = 1 << 20

    public init(
        depth: Int, embedDim: Int, numHeads: Int, qkHeadDim: Int, vHeadDim: Int,
        mlpHidden: Int, patchSize: Int, imageHeight: Int, imageWidth: Int,
        inChannels: Int = 3, prefixTokens: Int = 1, numClasses: Int = 1000,
        classifierHeads: Int = 1, preNorm: Bool = false, pool: Pool = .token, fcNorm: Bool = false,
        qkNorm: Bool = false, gatedMLP: Bool = false, classToken: Bool? = nil
    ) throws(UVCError) {
        self.depth = depth
        self.embedDim = embedDim
        self.numHeads = numHeads
        self.qkHeadDim = qkHeadDim
        self.vHeadDim = vHeadDim
        self.mlpHidden = mlpHidden
        self.patchSize = patchSize
        self.imageHeight = imageHeight
        self.imageWidth = imageWidth
        self.inChannels = inChannels
        self.prefixTokens = prefixTokens
        self.numClasses = numClasses
        self.classifierHeads = classifierHeads
        self.preNorm = preNorm
        self.pool = pool
        self.fcNorm = fcNorm
        self.qkNorm = qkNorm
        self.gatedMLP = gatedMLP
        self.classToken = classToken ?? (prefixTokens >= 1)
        try validate()
    }

    /// Decodes the flat encoding (`fieldNames`; switches 0 or 1, `pool` an index of `Pool.names`).
    public init(encoded e: UnsafeBufferPointer<Int64>) throws(UVCError) {
        try require(e.count == ViTSpec.encodedCount, "spec",
                    "expected \(ViTSpec.encodedCount) integers, got \(e.count)")
        try self.init(
            depth: Int(e[0]), embedDim: Int(e[1]), numHeads: Int(e[2]), qkHeadDim: Int(e[3]),
            vHeadDim: Int(e[4]), mlpHidden: Int(e[5]), patchSize: Int(e[6]),
            imageHeight: Int(e[7]), imageWidth: Int(e[8]), inChannels: Int(e[9]),
            prefixTokens: Int(e[10]), numClasses: Int(e[11]), classifierHeads: Int(e[12]),
            preNorm: try ViTSpec.flag(e[13], "spec.pre_norm"), pool: try ViTSpec.pool(e[14]),
            fcNorm: try ViTSpec.flag(e[15], "spec.fc_norm"), qkNorm: try ViTSpec.flag(e[16], "spec.qk_norm"),
            gatedMLP: try ViTSpec.flag(e[17], "spec.gated_mlp"), classToken: try ViTSpec.flag(e[18], "spec.class_token"))
    }

    private static func pool(_ v: Int64) throws(UVCError) -> Pool {
        guard v >= 0, v < Int64(Pool.allCases.count), let p = Pool(rawValue: Int(v)) else {
            throw UVCError("spec.pool", "must be an index of \(Pool.names), got \(v)")
        }
        return p
    }

    private static func flag(_ v: Int64, _ name: String) throws(UVCError) -> Bool {
        try require(v == 0 || v == 1, name, "must be 0 or 1, got \(v)")
        return v == 1
    }

    func validate() throws(UVCError) {
        for (name, value) in [("depth", depth), ("embed_dim", embedDim), ("num_heads", numHeads),
                              ("qk_head_dim", qkHeadDim), ("v_head_dim", vHeadDim),
                              ("mlp_hidden", mlpHidden), ("patch_size", patchSize),
                              ("image_height", imageHeight), ("image_width", imageWidth),
                              ("in_channels", inChannels), ("classifier_heads", classifierHeads)] {
            if value < 1 || value > ViTSpec.maxSize {
                throw UVCError("spec.\(name)", value < 1 ? "must be at least 1, got \(value)"
                                                      : "must be at most \(ViTSpec.maxSize), got \(value)")
            }
        }
        try require(prefixTokens >= 0 && prefixTokens <= 64, "spec.prefix_tokens",
                    "must be in 0...64, got \(prefixTokens)")
        try require(!classToken || prefixTokens >= 1, "spec.class_token",
                    "a class token is a prefix token; got class_token = 1 with prefix_tokens = 0")
        try require(numClasses >= 0 && numClasses <= ViTSpec.maxSize, "spec.num_classes",
                    "must be in 0...\(ViTSpec.maxSize), got \(numClasses)")
        try require(imageHeight % patchSize == 0 && imageWidth % patchSize == 0, "spec.patch_size",
                    "must divide the image size \(imageHeight)x\(imageWidth), got \(patchSize)")
        switch pool {
        case .token:
            try require(classifierHeads <= max(prefixTokens, 1), "spec.classifier_heads",
                        "each classifier head reads one prefix token; got \(classifierHeads) heads for \(prefixTokens) prefix tokens")
        case .avg, .map:
            try require(classifierHeads == 1, "spec.classifier_heads",
                        "\(Pool.names[pool.rawValue]) pooling feeds one classifier head, got \(classifierHeads)")
        }
        try require(!(pool == .map && fcNorm), "spec.fc_norm", "the attention-pool head has its own norm; fc_norm must be 0")
    }

    /// Patches per image.
    public var numPatches: Int { (imageHeight / patchSize) * (imageWidth / patchSize) }
    /// Tokens entering the first block: patches plus prefix tokens.
    public var numTokens: Int { numPatches + prefixTokens }
}
