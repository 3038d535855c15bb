import XCTest
@testable import UVCNative

/// A small deterministic generator for test inputs (the core's own PRNG is tested elsewhere).
struct TestRNG {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func int(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.count))
    }
    mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}

func deit(_ dim: Int, _ heads: Int, distilled: Bool = false) throws -> ViTSpec {
    try ViTSpec(depth: 12, embedDim: dim, numHeads: heads, qkHeadDim: dim / heads, vHeadDim: dim / heads,
                mlpHidden: 4 * dim, patchSize: 16, imageHeight: 224, imageWidth: 224,
                prefixTokens: distilled ? 2 : 1, classifierHeads: distilled ? 2 : 1)
}

/// A random spec; with `variants` also random pooling, norms and MLP kind (every layout the
/// cost model knows).
func randomSpec(_ rng: inout TestRNG, variants: Bool = false) throws -> ViTSpec {
    let heads = rng.int(1...6)
    let patch = [2, 4, 7].randomElement(using: &rng)!
    let pool = variants ? ViTSpec.Pool.allCases.randomElement(using: &rng)! : .token
    // Without class-token pooling: any prefix (registers), with or without a class token.
    let prefix = pool == .token ? (rng.int(0...2) == 2 ? 2 : 1) : rng.int(0...2)
    let classToken = pool == .token || (prefix >= 1 && rng.int(0...1) == 1)
    return try ViTSpec(depth: rng.int(1...5), embedDim: rng.int(4...48), numHeads: heads,
                       qkHeadDim: rng.int(1...12), vHeadDim: rng.int(1...12), mlpHidden: rng.int(1...96),
                       patchSize: patch, imageHeight: 28, imageWidth: 28, inChannels: rng.int(1...3),
                       prefixTokens: prefix, numClasses: rng.int(2...20),
                       classifierHeads: 1, preNorm: variants && rng.int(0...1) == 1, pool: pool,
                       fcNorm: variants && pool != .map && rng.int(0...1) == 1, qkNorm: variants && rng.int(0...1) == 1,
                       gatedMLP: variants && rng.int(0...1) == 1, classToken: classToken)
}

/// A random valid plan; a block whose MHSA runs drops tokens with probability 1/2 (when it can).
func randomPlan(_ spec: ViTSpec, _ rng: inout TestRNG) -> ArchPlan {
    var tokens = spec.numTokens
    var layers: [LayerPlan] = []
    for _ in 0..<spec.depth {
        // q/k norms normalise over all of a head's query/key dims: such a model keeps them all.
        let layer = LayerPlan(heads: rng.int(1...spec.numHeads),
                              qkDim: spec.qkNorm ? spec.qkHeadDim : rng.int(1...spec.qkHeadDim), vDim: rng.int(1...spec.vHeadDim),
                              neurons: rng.int(1...spec.mlpHidden), attention: rng.int(0...4) != 0,
                              mlp: rng.int(0...4) != 0, tokens: tokens)
        layers.append(layer)
        if layer.attention && tokens >= spec.prefixTokens + 3 && rng.int(0...1) == 0 {
            tokens = rng.int((spec.prefixTokens + 2)...(tokens - 1))
        }
    }
    return ArchPlan(layers: layers)
}

extension TestRNG: RandomNumberGenerator {}

func relaxedInputs(_ plan: ArchPlan) -> [Double] {
    let depth = plan.layers.count
    var x = [Double](repeating: 0, count: RelaxedField.allCases.count * depth)
    for (l, p) in plan.layers.enumerated() {
        let row: [(RelaxedField, Double)] = [(.heads, Double(p.heads)), (.qkDim, Double(p.qkDim)), (.vDim, Double(p.vDim)),
                                             (.neurons, Double(p.neurons)), (.attentionGate, p.attention ? 1 : 0),
                                             (.mlpGate, p.mlp ? 1 : 0), (.tokens, Double(p.tokens))]
        for (field, v) in row { x[field.rawValue * depth + l] = v }
    }
    return x
}

func expected(_ model: CostModel, _ x: [Double]) -> (Double, [Double]) {
    var grad = [Double](repeating: 0, count: x.count)
    let cost = x.withUnsafeBufferPointer { xb in
        grad.withUnsafeMutableBufferPointer { gb in model.expected(xb, gradient: gb) }
    }
    return (cost, grad)
}

final class CostModelTests: XCTestCase {
    /// REFERENCE.md §8: dense DeiT at 224, batch 1, in GMACs.
    func testDenseDeiTMatchesPublishedCounters() throws {
        let cases: [(Int, Int, Double, Double)] = [
            (192, 3, 1.2535, 1.2584), (384, 6, 4.5985, 4.6083), (768, 12, 17.563, 17.5827)]
        for (dim, heads, uvcG, fvcoreG) in cases {
            let spec = try deit(dim, heads)
            let dense = ArchPlan.dense(spec)
            let uvc = CostModel(spec: spec, convention: .uvc).exactTotal(dense) / 1e9
            let fvcore = CostModel(spec: spec, convention: .fvcore).exactTotal(dense) / 1e9
            XCTAssertEqual(uvc, uvcG, accuracy: uvcG * 5e-5, "DeiT \(dim) uvc")
            XCTAssertEqual(fvcore, fvcoreG, accuracy: fvcoreG * 5e-5, "DeiT \(dim) fvcore")
        }
    }

    /// The analytic UVC formula of REFERENCE.md §3, written out independently.
    func testUVCConventionEqualsAnalyticFormula() throws {
        for (dim, heads) in [(192, 3), (384, 6), (768, 12)] {
            let spec = try deit(dim, heads)
            let n = 197.0, d = Double(dim)
            let block = 3 * n * d * d + 2 * n * n * d + n * d * d + 8 * n * d * d
            let analytic = 12 * block + 196 * d * 16 * 16 * 3
            XCTAssertEqual(CostModel(spec: spec, convention: .uvc).exactTotal(.dense(spec)), analytic)
        }
    }

    func testDistilledAddsOneTokenAndASecondHead() throws {
        let plain = try deit(192, 3), distilled = try deit(192, 3, distilled: true)
        XCTAssertEqual(distilled.numTokens, 198)
        let model = CostModel(spec: distilled, convention: .fvcore)
        var layers = [Double](repeating: 0, count: 12 * CostModel.Component.allCases.count)
        var globals = [Double](repeating: 0, count: CostModel.GlobalComponent.allCases.count)
        layers.withUnsafeMutableBufferPointer { lb in
            globals.withUnsafeMutableBufferPointer { gb in _ = model.exact(.dense(distilled), layers: lb, globals: gb) }
        }
        XCTAssertEqual(globals[CostModel.GlobalComponent.head.rawValue], 2 * 192 * 1000)
        XCTAssertGreaterThan(model.exactTotal(.dense(distilled)),
                             CostModel(spec: plain, convention: .fvcore).exactTotal(.dense(plain)))
    }

    func testThePreNormCountsOneNormOverTheTokensEnteringBlockZero() throws {
        let plain = try deit(192, 3)
        var pre = plain
        pre.preNorm = true
        let fvcore = CostModel(spec: pre, convention: .fvcore), full = CostModel(spec: pre, convention: CostConvention(layerNormPerElement: 5, bias: true))
        XCTAssertEqual(fvcore.preNormMACs, 5 * 197 * 192)
        XCTAssertEqual(fvcore.exactTotal(.dense(pre)) - CostModel(spec: plain, convention: .fvcore).exactTotal(.dense(plain)),
                       5 * 197 * 192)
        // Without a patch-embedding bias (timm's pre-norm layout) the full convention counts no bias there.
        XCTAssertEqual(full.patchEmbedMACs, CostModel(spec: plain, convention: CostConvention(layerNormPerElement: 5, bias: true)).patchEmbedMACs - 196 * 192)
        XCTAssertEqual(CostModel(spec: plain, convention: .fvcore).preNormMACs, 0)
    }

    /// Pooling, fc_norm, qk_norm and gated MLPs, written out on DeiT-Tiny's shape (D 192, 3 heads
    /// of 64, MLP 768, 197 tokens, 1000 classes), each against the plain model.
    func testLayoutVariantsAnalytic() throws {
        let plain = try deit(192, 3)
        let d = 192.0, n = 197.0, m = 768.0
        let fvcore = CostModel(spec: plain, convention: .fvcore).exactTotal(.dense(plain))
        let uvc = CostModel(spec: plain, convention: .uvc).exactTotal(.dense(plain))
        func total(_ change: (inout ViTSpec) -> Void, _ convention: CostConvention) throws -> Double {
            var spec = plain
            change(&spec)
            try spec.validate()
            return CostModel(spec: spec, convention: convention).exactTotal(.dense(spec))
        }
        // Average pooling adds (n - 1)·D only where the convention counts pooling.
        XCTAssertEqual(try total({ $0.pool = .avg }, .fvcore), fvcore)
        let pooled = CostConvention(layerNormPerElement: 5, head: true, pool: true)
        XCTAssertEqual(try total({ $0.pool = .avg }, pooled) - CostModel(spec: plain, convention: pooled).exactTotal(.dense(plain)),
                       (n - 1) * d)
        // fc_norm normalises one pooled vector instead of every token.
        XCTAssertEqual(try total({ $0.pool = .avg; $0.fcNorm = true }, .fvcore), fvcore - 5 * n * d + 5 * d)
        // The attention-pool head over all n tokens: q, kv, QKᵀ, AV, proj, its norm and MLP.
        let map = d * d + 2 * n * d * d + 2 * n * d + d * d + 2 * d * m
        XCTAssertEqual(try total({ $0.pool = .map }, .fvcore), fvcore + map + 5 * d)
        XCTAssertEqual(try total({ $0.pool = .map }, .uvc), uvc + map)
        // qk_norm: 2 norms of 3 × 64 per token in each of 12 blocks.
        XCTAssertEqual(try total({ $0.qkNorm = true }, .fvcore), fvcore + 12 * 5 * 2 * n * 3 * 64)
        XCTAssertEqual(try total({ $0.qkNorm = true }, .uvc), uvc)
        // A gated MLP of 768 units has 2 × 768 fc1 rows.
        XCTAssertEqual(try total({ $0.gatedMLP = true }, .uvc), uvc + 12 * n * d * m)
        let full = CostConvention(layerNormPerElement: 5, softmax: true, gelu: true, bias: true, head: true)
        XCTAssertEqual(try total({ $0.gatedMLP = true }, full) - CostModel(spec: plain, convention: full).exactTotal(.dense(plain)),
                       12 * (n * d * m + n * m))
        // Pooling layouts refuse what timm cannot build.
        var bad = plain
        bad.pool = .map
        bad.fcNorm = true
        XCTAssertThrowsError(try bad.validate())
        bad = try deit(192, 3, distilled: true)
        bad.pool = .avg
        XCTAssertThrowsError(try bad.validate())
    }

    func testSkippedPartsCostNothing() throws {
        let spec = try deit(192, 3)
        let model = CostModel(spec: spec, convention: CostConvention(layerNormPerElement: 5, softmax: true,
                                                                      gelu: true, bias: true, head: true))
        var plan = ArchPlan.dense(spec)
        let dense = model.exactTotal(plan)
        for l in 0..<12 { plan.layers[l].attention = false; plan.layers[l].mlp = false }
        let embedOnly = model.patchEmbedMACs + model.headMACs + model.finalNormMACs(tokens: 197).macs
        XCTAssertEqual(model.exactTotal(plan), embedOnly)
        XCTAssertLessThan(embedOnly, dense)
    }

    /// Narrower queries and keys, written out: DeiT-S keeping 32 of 64 q/k dims in every head of
    /// every block saves q and k's rows (2·N·D·h·32) and QKᵀ (h·N²·32) per block, and with
    /// biases counted 2·N·h·32 more; the value side is untouched.
    func testNarrowQueriesAndKeysAnalytic() throws {
        let spec = try deit(384, 6)
        let (n, d, h) = (197.0, 384.0, 6.0)
        var plan = ArchPlan.dense(spec)
        for l in 0..<12 { plan.layers[l].qkDim = 32 }
        try plan.validate(for: spec)
        let uvc = CostModel(spec: spec, convention: .uvc)
        XCTAssertEqual(uvc.exactTotal(.dense(spec)) - uvc.exactTotal(plan), 12 * (2 * n * d * h * 32 + h * n * n * 32))
        let biased = CostModel(spec: spec, convention: CostConvention(bias: true))
        XCTAssertEqual(biased.exactTotal(.dense(spec)) - biased.exactTotal(plan),
                       12 * (2 * n * d * h * 32 + h * n * n * 32 + 2 * n * h * 32))
        // A dropping block's ranking row q·Kᵀ is as narrow as its queries: h·N·q.
        var drop = plan
        for l in 4..<12 { drop.layers[l].tokens = 120 }
        var dense = ArchPlan.dense(spec)
        for l in 4..<12 { dense.layers[l].tokens = 120 }
        XCTAssertEqual(uvc.exactTotal(dense) - uvc.exactTotal(drop),
                       4 * (2 * n * d * h * 32 + h * n * n * 32) + 8 * (2 * 120 * d * h * 32 + h * 120 * 120 * 32)
                       + h * n * 32)
    }

    func testQueryKeyWidthIsValidated() throws {
        let spec = try deit(192, 3)
        var plan = ArchPlan.dense(spec)
        plan.layers[2].qkDim = 65
        XCTAssertThrowsError(try plan.validate(for: spec)) { XCTAssertTrue("\($0)".contains("query/key dims")) }
        plan.layers[2].qkDim = 0
        XCTAssertThrowsError(try plan.validate(for: spec), "a running MHSA keeps at least one q/k dim")
        plan.layers[2].attention = false
        plan.layers[2].heads = 0
        plan.layers[2].vDim = 0
        XCTAssertNoThrow(try plan.validate(for: spec), "a skipped MHSA keeps none")
        var normed = spec
        normed.qkNorm = true
        var narrow = ArchPlan.dense(normed)
        narrow.layers[0].qkDim = 63
        XCTAssertThrowsError(try narrow.validate(for: normed)) { XCTAssertTrue("\($0)".contains("qk_norm")) }
    }

    /// A token drop, written out: DeiT-S drops 197 → 120 tokens in block 3 (uvc convention).
    func testTokenDropAnalytic() throws {
        let spec = try deit(384, 6)
        let model = CostModel(spec: spec, convention: .uvc)
        var plan = ArchPlan.dense(spec)
        for l in 4..<12 { plan.layers[l].tokens = 120 }
        try plan.validate(for: spec)
        let d = 384.0
        func block(_ n: Double, _ n2: Double) -> Double { 4 * n * d * d + 2 * n * n * d + 8 * n2 * d * d }
        let fuse = 6 * 197 * 64 + (197 - 120 + 1) * d
        let analytic = 3 * block(197, 197) + block(197, 120) + fuse + 8 * block(120, 120) + 196 * d * 16 * 16 * 3
        XCTAssertEqual(model.exactTotal(plan), analytic)
        let width = CostModel.Component.allCases.count
        var layers = [Double](repeating: 0, count: 12 * width)
        var globals = [Double](repeating: 0, count: CostModel.GlobalComponent.allCases.count)
        layers.withUnsafeMutableBufferPointer { lb in
            globals.withUnsafeMutableBufferPointer { gb in _ = model.exact(plan, layers: lb, globals: gb) }
        }
        let fuseColumn = CostModel.Component.fuse.rawValue
        XCTAssertEqual((0..<12).map { layers[$0 * width + fuseColumn] }, (0..<12).map { $0 == 3 ? fuse : 0 })
        XCTAssertEqual(layers[3 * width + CostModel.Component.fc1.rawValue], 120 * d * 4 * d)
        XCTAssertEqual(layers[3 * width + CostModel.Component.qkv.rawValue], 197 * d * 3 * d)
        // fvcore: norm2 of block 3 and the final norm see the 120 tokens left.
        let fv = CostModel(spec: spec, convention: .fvcore)
        layers.withUnsafeMutableBufferPointer { lb in
            globals.withUnsafeMutableBufferPointer { gb in _ = fv.exact(plan, layers: lb, globals: gb) }
        }
        XCTAssertEqual(layers[3 * width + CostModel.Component.norm2.rawValue], 5 * 120 * d)
        XCTAssertEqual(layers[3 * width + CostModel.Component.norm1.rawValue], 5 * 197 * d)
        XCTAssertEqual(globals[CostModel.GlobalComponent.finalNorm.rawValue], 5 * 120 * d)
        XCTAssertEqual(layers[3 * width + fuseColumn], fuse, "the fusion matmuls count under every convention")
    }

    /// Without a class token a dropping block ranks by the attention each token receives: the
    /// whole map q·Kᵀ again (ρ = N rows) and, under `softmax`, its softmax.
    func testTokenDropByReceivedAttentionAnalytic() throws {
        let spec = try ViTSpec(depth: 12, embedDim: 384, numHeads: 6, qkHeadDim: 64, vHeadDim: 64, mlpHidden: 1536,
                               patchSize: 16, imageHeight: 224, imageWidth: 224, prefixTokens: 0, pool: .avg)
        var plan = ArchPlan.dense(spec)
        for l in 4..<12 { plan.layers[l].tokens = 120 }
        try plan.validate(for: spec)
        let d = 384.0
        func block(_ n: Double, _ n2: Double) -> Double { 4 * n * d * d + 2 * n * n * d + 8 * n2 * d * d }
        let fuse = 6 * 196 * 196 * 64 + (196 - 120 + 1) * d
        let analytic = 3 * block(196, 196) + block(196, 120) + fuse + 8 * block(120, 120) + 196 * d * 16 * 16 * 3
        XCTAssertEqual(CostModel(spec: spec, convention: .uvc).exactTotal(plan), analytic)
        let withSoftmax = CostModel(spec: spec, convention: CostConvention(softmax: true))
        let full: Double = 6 * 196 * 196, dropped: Double = 6 * 120 * 120
        let softmax = 4 * full + 8 * dropped + full
        XCTAssertEqual(withSoftmax.exactTotal(plan), analytic + softmax, "the ranking map's softmax: h·N·N more")
        XCTAssertFalse(spec.classToken, "no prefix token: no class token")
        let withClass = try ViTSpec(depth: 12, embedDim: 384, numHeads: 6, qkHeadDim: 64, vHeadDim: 64,
                                    mlpHidden: 1536, patchSize: 16, imageHeight: 224, imageWidth: 224, pool: .avg)
        XCTAssertTrue(CostModel(spec: withClass, convention: .uvc).ranksByClassToken, "a class token ranks, whatever the pooling")
        XCTAssertThrowsError(try ViTSpec(depth: 1, embedDim: 8, numHeads: 2, qkHeadDim: 4, vHeadDim: 4, mlpHidden: 8,
                                         patchSize: 2, imageHeight: 8, imageWidth: 8, prefixTokens: 0, pool: .avg,
                                         classToken: true)) {
            XCTAssertEqual(($0 as? UVCError)?.argument, "spec.class_token")
        }
    }

    /// At integer counts and 0/1 gates, the relaxed cost is the exact count.
    func testRelaxedAtIntegersEqualsExact() throws {
        var rng = TestRNG(state: 7)
        var drops = 0
        for trial in 0..<400 {
            let spec = try randomSpec(&rng, variants: trial % 2 == 1)
            let plan = randomPlan(spec, &rng)
            try plan.validate(for: spec)
            drops += zip(plan.layers, plan.layers.dropFirst()).filter { $0.tokens > $1.tokens }.count
            for convention in [CostConvention.uvc, .fvcore, CostConvention(layerNormPerElement: 2.5, softmax: true, gelu: true, bias: true, head: true, pool: true)] {
                let model = CostModel(spec: spec, convention: convention)
                XCTAssertEqual(expected(model, relaxedInputs(plan)).0, model.exactTotal(plan))
            }
        }
        XCTAssertGreaterThan(drops, 100, "the random plans drop tokens")
    }

    /// The gradient matches central finite differences to 1e-6 relative, at points where every
    /// block drops tokens (tokens[l + 1] < tokens[l] strictly, by more than the step).
    func testGradientMatchesFiniteDifferences() throws {
        var rng = TestRNG(state: 11)
        let conventions = [CostConvention.uvc, .fvcore,
                           CostConvention(layerNormPerElement: 5, softmax: true, gelu: true, bias: true, head: true, pool: true)]
        for trial in 0..<120 {
            let spec = trial == 0 ? try deit(768, 12) : try randomSpec(&rng, variants: trial % 2 == 1)
            let model = CostModel(spec: spec, convention: conventions[trial % 3])
            var x = [Double](repeating: 0, count: RelaxedField.allCases.count * spec.depth)
            for field in RelaxedField.allCases {
                for l in 0..<spec.depth {
                    x[field.rawValue * spec.depth + l] = (0.05 + 0.9 * rng.unit()) * field.upperBound(spec)
                }
            }
            let tokenRow = RelaxedField.tokens.rawValue * spec.depth
            x[tokenRow] = (0.6 + 0.4 * rng.unit()) * Double(spec.numTokens)
            for l in 1..<spec.depth { x[tokenRow + l] = x[tokenRow + l - 1] * (0.5 + 0.45 * rng.unit()) }
            let (_, grad) = expected(model, x)
            for i in x.indices {
                let h = 1e-3 * max(1, abs(x[i]))
                var up = x, down = x
                up[i] += h
                down[i] -= h
                let numeric = (expected(model, up).0 - expected(model, down).0) / (2 * h)
                let scale = max(abs(numeric), abs(grad[i]), 1)
                XCTAssertLessThanOrEqual(abs(numeric - grad[i]) / scale, 1e-6, "trial \(trial) input \(i)")
            }
        }
    }

    func testInvalidSpecsAndPlansThrow() throws {
        XCTAssertThrowsError(try ViTSpec(depth: 0, embedDim: 8, numHeads: 2, qkHeadDim: 4, vHeadDim: 4, mlpHidden: 8,
                                         patchSize: 4, imageHeight: 8, imageWidth: 8)) { error in
            XCTAssertEqual((error as? UVCError)?.argument, "spec.depth")
        }
        XCTAssertThrowsError(try ViTSpec(depth: 1, embedDim: 8, numHeads: 2, qkHeadDim: 4, vHeadDim: 4, mlpHidden: 8,
                                         patchSize: 3, imageHeight: 8, imageWidth: 8))
        let spec = try deit(192, 3)
        var plan = ArchPlan.dense(spec)
        plan.layers[2].heads = 4
        XCTAssertThrowsError(try plan.validate(for: spec)) { error in
            XCTAssertTrue((error as? UVCError)?.message.contains("layer 2 keeps 4 heads") ?? false)
        }
        plan = .dense(spec)
        plan.layers[5].tokens = 198
        XCTAssertThrowsError(try plan.validate(for: spec))
        plan = .dense(spec)
        plan.layers[5].tokens = 100
        XCTAssertThrowsError(try plan.validate(for: spec)) { error in
            XCTAssertEqual((error as? UVCError)?.message.hasPrefix("layer 6 takes 197 tokens, more than the 100 of layer 5"), true)
        }
        plan.layers[6...].indices.forEach { plan.layers[$0].tokens = 100 }
        XCTAssertNoThrow(try plan.validate(for: spec))
        for l in 0..<12 { plan.layers[l].tokens = 150 }
        XCTAssertThrowsError(try plan.validate(for: spec)) { error in
            XCTAssertEqual((error as? UVCError)?.message.hasPrefix("layer 0 takes 150 tokens, expected all 197"), true)
        }
        plan = .dense(spec)
        plan.layers[3].attention = false
        plan.layers[4...].indices.forEach { plan.layers[$0].tokens = 100 }
        XCTAssertThrowsError(try plan.validate(for: spec)) { error in
            XCTAssertEqual((error as? UVCError)?.message.hasPrefix("layer 3 drops tokens (197 -> 100) with its attention off"), true)
        }
        plan.layers[3].attention = true
        plan.layers[4...].indices.forEach { plan.layers[$0].tokens = 2 }
        XCTAssertThrowsError(try plan.validate(for: spec)) { error in
            XCTAssertEqual((error as? UVCError)?.message.hasPrefix("layer 3 drops tokens to 2, expected at least 3"), true)
        }
        plan.layers[4...].indices.forEach { plan.layers[$0].tokens = 3 }
        XCTAssertNoThrow(try plan.validate(for: spec), "one kept patch and the fused token")
        let noClass = try ViTSpec(depth: 2, embedDim: 8, numHeads: 2, qkHeadDim: 4, vHeadDim: 4, mlpHidden: 8,
                                  patchSize: 2, imageHeight: 8, imageWidth: 8, prefixTokens: 0)
        var headless = ArchPlan.dense(noClass)
        headless.layers[1].tokens = 10
        XCTAssertNoThrow(try headless.validate(for: noClass), "without a class token, ranked by received attention")
        plan.layers[0].neurons = 0
        XCTAssertThrowsError(try plan.validate(for: spec))
        plan.layers[0].mlp = false
        XCTAssertNoThrow(try plan.validate(for: spec))
    }

    func testRelaxedValidationRejectsNaNAndOutOfRange() throws {
        let spec = try deit(192, 3)
        let model = CostModel(spec: spec, convention: .uvc)
        var x = relaxedInputs(.dense(spec))
        XCTAssertNoThrow(try x.withUnsafeBufferPointer { try model.validateRelaxed($0) })
        let bads: [(RelaxedField, Int, Double)] = [(.heads, 0, .nan), (.vDim, 0, -1), (.attentionGate, 4, 2),
                                                   (.tokens, 0, 198), (.heads, 5, .infinity), (.qkDim, 3, 65)]
        for (field, layer, bad) in bads {
            var y = x
            y[field.rawValue * spec.depth + layer] = bad
            XCTAssertThrowsError(try y.withUnsafeBufferPointer { try model.validateRelaxed($0) })
        }
        x.removeLast()
        XCTAssertThrowsError(try x.withUnsafeBufferPointer { try model.validateRelaxed($0) })
    }
}
