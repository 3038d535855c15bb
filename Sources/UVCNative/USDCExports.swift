// C entry points of USDC: group partitions with their gate noise, group gates forward and
// backward, and the resource loss. The generator state is four caller-owned int64 words, read,
// advanced and written back only when a call succeeds.

/// Seeds the generator: writes the words of Xoshiro256StarStar(seed) to `words_out` (4,) int64.
@c(uvc_usdc_seed)
public func uvcUsdcSeed(
    _ seedData: UnsafePointer<Int64>, _ seedShape: UnsafePointer<Int>, _ seedDims: Int,
    _ wordsData: UnsafeMutablePointer<Int64>, _ wordsShape: UnsafePointer<Int>, _ wordsDims: Int,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let seed = ArrayArg("seed", seedData, seedShape, seedDims)
        try seed.expect([1])
        let words = OutArg("words_out", wordsData, wordsShape, wordsDims)
        try words.expect([4])
        store(Xoshiro256StarStar(seed: UInt64(bitPattern: seed.buffer[0])), words.buffer)
    }
}

/// One step's partition of a batch of B = len(groups_out) samples and its gate noise. Shapes:
/// words (4,) int64 (read and advanced), groups_out (B,) int64, sizes_out (G,) int64,
/// noise_out (G, C) float64 for C gate columns (C may be 0). `grouping`: 0 halving (G = the bit
/// length of B), 1 one group per sample (G = B), 2 one group (G = 1), 3 mixed (G = the bit length
/// of ⌈B/2⌉ plus ⌊B/2⌋).
@c(uvc_usdc_partition)
public func uvcUsdcPartition(
    _ wordsData: UnsafeMutablePointer<Int64>, _ wordsShape: UnsafePointer<Int>, _ wordsDims: Int,
    _ groupsData: UnsafeMutablePointer<Int64>, _ groupsShape: UnsafePointer<Int>, _ groupsDims: Int,
    _ sizesData: UnsafeMutablePointer<Int64>, _ sizesShape: UnsafePointer<Int>, _ sizesDims: Int,
    _ noiseData: UnsafeMutablePointer<Double>, _ noiseShape: UnsafePointer<Int>, _ noiseDims: Int,
    _ grouping: Double,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let kinds = GroupPartition.Grouping.allCases
        try require(kinds.contains { Double($0.rawValue) == grouping }, "grouping",
                    "must be 0 (halving), 1 (sample), 2 (batch) or 3 (mixed), got \(grouping)")
        let mode = GroupPartition.Grouping(rawValue: Int(grouping))!
        let words = OutArg("words", wordsData, wordsShape, wordsDims)
        try words.expect([4])
        var rng = try load(words.buffer)
        let groups = OutArg("groups_out", groupsData, groupsShape, groupsDims)
        try require(groups.shape.count == 1 && groups.shape[0] >= 1, groups.name,
                    "expected shape (batch,) with batch >= 1, got \(shapeString(groups.shape))")
        let count = mode.groupCount(batch: groups.shape[0])
        let sizes = OutArg("sizes_out", sizesData, sizesShape, sizesDims)
        try sizes.expect([count])
        let noise = OutArg("noise_out", noiseData, noiseShape, noiseDims)
        try require(noise.shape.count == 2 && noise.shape[0] == count, noise.name,
                    "expected shape (\(count), columns), got \(shapeString(noise.shape))")
        GroupPartition.sample(mode, groups: groups.buffer, sizes: sizes.buffer, rng: &rng)
        GroupPartition.logisticNoise(into: noise.buffer, rng: &rng)
        store(rng, words.buffer)
    }
}

/// Group gates forward. Shapes: logits (B, C), groups (B,) int64, noise (G, C); gates_out and
/// probs_out (B, C). `straightThrough` is 0 or 1.
@c(uvc_usdc_group_gates)
public func uvcUsdcGroupGates(
    _ logitsData: UnsafePointer<Double>, _ logitsShape: UnsafePointer<Int>, _ logitsDims: Int,
    _ groupsData: UnsafePointer<Int64>, _ groupsShape: UnsafePointer<Int>, _ groupsDims: Int,
    _ noiseData: UnsafePointer<Double>, _ noiseShape: UnsafePointer<Int>, _ noiseDims: Int,
    _ gatesData: UnsafeMutablePointer<Double>, _ gatesShape: UnsafePointer<Int>, _ gatesDims: Int,
    _ probsData: UnsafeMutablePointer<Double>, _ probsShape: UnsafePointer<Int>, _ probsDims: Int,
    _ tau: Double, _ straightThrough: Double,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let logits = ArrayArg("logits", logitsData, logitsShape, logitsDims)
        let noise = ArrayArg("noise", noiseData, noiseShape, noiseDims)
        let gates = try groupGates(logits, ArrayArg("groups", groupsData, groupsShape, groupsDims), noise)
        try require(straightThrough == 0 || straightThrough == 1, "straight_through",
                    "must be 0 or 1, got \(straightThrough)")
        try gates.validate(logits: logits.buffer, noise: noise.buffer, tau: tau)
        let out = OutArg("gates_out", gatesData, gatesShape, gatesDims)
        try out.expect(logits.shape)
        let probs = OutArg("probs_out", probsData, probsShape, probsDims)
        try probs.expect(logits.shape)
        gates.forward(logits: logits.buffer, noise: noise.buffer, tau: tau, straightThrough: straightThrough == 1,
                      gates: out.buffer, probs: probs.buffer)
    }
}

/// Group gates backward. Shapes as the forward; gate_grad, prob_grad and grad_out (B, C).
@c(uvc_usdc_group_gates_backward)
public func uvcUsdcGroupGatesBackward(
    _ logitsData: UnsafePointer<Double>, _ logitsShape: UnsafePointer<Int>, _ logitsDims: Int,
    _ groupsData: UnsafePointer<Int64>, _ groupsShape: UnsafePointer<Int>, _ groupsDims: Int,
    _ noiseData: UnsafePointer<Double>, _ noiseShape: UnsafePointer<Int>, _ noiseDims: Int,
    _ gateGradData: UnsafePointer<Double>, _ gateGradShape: UnsafePointer<Int>, _ gateGradDims: Int,
    _ probGradData: UnsafePointer<Double>, _ probGradShape: UnsafePointer<Int>, _ probGradDims: Int,
    _ gradData: UnsafeMutablePointer<Double>, _ gradShape: UnsafePointer<Int>, _ gradDims: Int,
    _ tau: Double,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let logits = ArrayArg("logits", logitsData, logitsShape, logitsDims)
        let noise = ArrayArg("noise", noiseData, noiseShape, noiseDims)
        let gates = try groupGates(logits, ArrayArg("groups", groupsData, groupsShape, groupsDims), noise)
        try gates.validate(logits: logits.buffer, noise: noise.buffer, tau: tau)
        let gateGrad = ArrayArg("gate_grad", gateGradData, gateGradShape, gateGradDims)
        try gateGrad.expect(logits.shape)
        let probGrad = ArrayArg("prob_grad", probGradData, probGradShape, probGradDims)
        try probGrad.expect(logits.shape)
        for (name, values) in [("gate_grad", gateGrad.buffer), ("prob_grad", probGrad.buffer)] {
            for v in values { try require(v.isFinite, name, "expected finite values, got \(v)") }
        }
        let grad = OutArg("grad_out", gradData, gradShape, gradDims)
        try grad.expect(logits.shape)
        gates.backward(logits: logits.buffer, noise: noise.buffer, tau: tau, gateGradient: gateGrad.buffer,
                       probGradient: probGrad.buffer, into: grad.buffer)
    }
}

/// The resource loss. Shapes (L = depth): head_probs (L, heads), neuron_probs (L, K), part_probs
/// and rates (L, 2), gate_macs and gate_probs (L, O); each `*_grad` output the shape of its
/// input; values_out (3,): loss, F, expected MACs. `dual` is z of γ·(F − target)² + z·(F − target).
@c(uvc_usdc_resource_loss)
public func uvcUsdcResourceLoss(
    _ specData: UnsafePointer<Int64>, _ specShape: UnsafePointer<Int>, _ specDims: Int,
    _ convData: UnsafePointer<Double>, _ convShape: UnsafePointer<Int>, _ convDims: Int,
    _ headData: UnsafePointer<Double>, _ headShape: UnsafePointer<Int>, _ headDims: Int,
    _ neuronData: UnsafePointer<Double>, _ neuronShape: UnsafePointer<Int>, _ neuronDims: Int,
    _ partData: UnsafePointer<Double>, _ partShape: UnsafePointer<Int>, _ partDims: Int,
    _ rateData: UnsafePointer<Double>, _ rateShape: UnsafePointer<Int>, _ rateDims: Int,
    _ gateMACData: UnsafePointer<Double>, _ gateMACShape: UnsafePointer<Int>, _ gateMACDims: Int,
    _ gateProbData: UnsafePointer<Double>, _ gateProbShape: UnsafePointer<Int>, _ gateProbDims: Int,
    _ valuesData: UnsafeMutablePointer<Double>, _ valuesShape: UnsafePointer<Int>, _ valuesDims: Int,
    _ headOut: UnsafeMutablePointer<Double>, _ headOutShape: UnsafePointer<Int>, _ headOutDims: Int,
    _ neuronOut: UnsafeMutablePointer<Double>, _ neuronOutShape: UnsafePointer<Int>, _ neuronOutDims: Int,
    _ partOut: UnsafeMutablePointer<Double>, _ partOutShape: UnsafePointer<Int>, _ partOutDims: Int,
    _ rateOut: UnsafeMutablePointer<Double>, _ rateOutShape: UnsafePointer<Int>, _ rateOutDims: Int,
    _ gateMACOut: UnsafeMutablePointer<Double>, _ gateMACOutShape: UnsafePointer<Int>, _ gateMACOutDims: Int,
    _ gateProbOut: UnsafeMutablePointer<Double>, _ gateProbOutShape: UnsafePointer<Int>, _ gateProbOutDims: Int,
    _ target: Double, _ gamma: Double, _ dual: Double,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let model = try costModel(ArrayArg("spec", specData, specShape, specDims),
                                  ArrayArg("convention", convData, convShape, convDims))
        let inputs = ResourceLoss.Arrays(
            headProbs: ArrayArg("head_probs", headData, headShape, headDims),
            neuronProbs: ArrayArg("neuron_probs", neuronData, neuronShape, neuronDims),
            partProbs: ArrayArg("part_probs", partData, partShape, partDims),
            rates: ArrayArg("rates", rateData, rateShape, rateDims),
            gateMACs: ArrayArg("gate_macs", gateMACData, gateMACShape, gateMACDims),
            gateProbs: ArrayArg("gate_probs", gateProbData, gateProbShape, gateProbDims))
        let outputs = ResourceLoss.Arrays(
            headProbs: OutArg("head_grad", headOut, headOutShape, headOutDims),
            neuronProbs: OutArg("neuron_grad", neuronOut, neuronOutShape, neuronOutDims),
            partProbs: OutArg("part_grad", partOut, partOutShape, partOutDims),
            rates: OutArg("rate_grad", rateOut, rateOutShape, rateOutDims),
            gateMACs: OutArg("gate_macs_grad", gateMACOut, gateMACOutShape, gateMACOutDims),
            gateProbs: OutArg("gate_probs_grad", gateProbOut, gateProbOutShape, gateProbOutDims))
        let depth = model.spec.depth
        for a in [inputs.neuronProbs, inputs.gateMACs] {
            try require(a.shape.count == 2 && a.shape[0] == depth, a.name,
                        "expected shape (\(depth), width), got \(shapeString(a.shape))")
        }
        let loss = try ResourceLoss(model: model, neuronGroups: inputs.neuronProbs.shape[1],
                                    gateOptions: inputs.gateMACs.shape[1])
        let ins = [inputs.headProbs, inputs.neuronProbs, inputs.partProbs, inputs.rates, inputs.gateMACs,
                   inputs.gateProbs]
        let outs = [outputs.headProbs, outputs.neuronProbs, outputs.partProbs, outputs.rates, outputs.gateMACs,
                    outputs.gateProbs]
        for (k, (_, width)) in loss.widths.enumerated() {
            try ins[k].expect([depth, width])
            try outs[k].expect([depth, width])
        }
        let values = OutArg("values_out", valuesData, valuesShape, valuesDims)
        try values.expect([3])
        let x = ResourceLoss.Arrays(
            headProbs: inputs.headProbs.buffer, neuronProbs: inputs.neuronProbs.buffer,
            partProbs: inputs.partProbs.buffer, rates: inputs.rates.buffer, gateMACs: inputs.gateMACs.buffer,
            gateProbs: inputs.gateProbs.buffer)
        try loss.validate(x, target: target, gamma: gamma, dual: dual)
        let g = ResourceLoss.Arrays(
            headProbs: outputs.headProbs.buffer, neuronProbs: outputs.neuronProbs.buffer,
            partProbs: outputs.partProbs.buffer, rates: outputs.rates.buffer, gateMACs: outputs.gateMACs.buffer,
            gateProbs: outputs.gateProbs.buffer)
        let v = loss.evaluate(x, target: target, gamma: gamma, dual: dual, gradient: g)
        values.buffer[0] = v.loss
        values.buffer[1] = v.ratio
        values.buffer[2] = v.macs
    }
}

private func groupGates(_ logits: ArrayArg<Double>, _ groups: ArrayArg<Int64>,
                        _ noise: ArrayArg<Double>) throws(UVCError) -> GroupGates {
    try require(logits.shape.count == 2 && logits.shape[0] >= 1, logits.name,
                "expected shape (batch, columns) with batch >= 1, got \(shapeString(logits.shape))")
    try groups.expect([logits.shape[0]])
    try require(noise.shape.count == 2 && noise.shape[1] == logits.shape[1], noise.name,
                "expected shape (groups, \(logits.shape[1])), got \(shapeString(noise.shape))")
    return try GroupGates(groups: groups.buffer, groupCount: noise.shape[0], columns: logits.shape[1])
}

private func load(_ words: UnsafeMutableBufferPointer<Int64>) throws(UVCError) -> Xoshiro256StarStar {
    do throws(UVCError) {
        return try Xoshiro256StarStar(words: (UInt64(bitPattern: words[0]), UInt64(bitPattern: words[1]),
                                              UInt64(bitPattern: words[2]), UInt64(bitPattern: words[3])))
    } catch {
        throw UVCError("words", error.message)
    }
}

private func store(_ rng: Xoshiro256StarStar, _ words: UnsafeMutableBufferPointer<Int64>) {
    let w = rng.words
    (words[0], words[1], words[2], words[3]) = (Int64(bitPattern: w.0), Int64(bitPattern: w.1),
                                                Int64(bitPattern: w.2), Int64(bitPattern: w.3))
}
