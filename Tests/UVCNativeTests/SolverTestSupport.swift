@testable import UVCNative

/// A small ViT (3 blocks, 3 heads of 8 dims, 32 neurons, 17 tokens) that keeps solver tests fast.
func smallSolverSpec(depth: Int = 3) throws -> ViTSpec {
    try ViTSpec(depth: depth, embedDim: 24, numHeads: 3, qkHeadDim: 8, vHeadDim: 8, mlpHidden: 32,
                patchSize: 4, imageHeight: 16, imageWidth: 16, numClasses: 10)
}

/// Owned per-group arrays, lent to the solver as `GroupScores` or `GroupOutputs`.
struct GroupData: Equatable {
    var heads: [Double]
    var dims: [Double]
    var neurons: [Double]

    init(_ spec: ViTSpec, fill: Double) {
        let n = spec.groupArraySizes
        heads = Array(repeating: fill, count: n.heads)
        dims = Array(repeating: fill, count: n.dims)
        neurons = Array(repeating: fill, count: n.neurons)
    }

    /// Random column scores; a head's score is the sum of its dims' scores, as in a model.
    init(_ spec: ViTSpec, _ rng: inout Xoshiro256StarStar) {
        self.init(spec, fill: 0)
        for i in dims.indices { dims[i] = 0.1 + rng.nextOpenUnit() }
        for i in neurons.indices { neurons[i] = 0.1 + rng.nextOpenUnit() }
        for h in heads.indices { heads[h] = dims[(h * spec.vHeadDim)..<((h + 1) * spec.vHeadDim)].reduce(0, +) }
    }

    func withScores<R>(_ body: (GroupScores) throws -> R) rethrows -> R {
        try heads.withUnsafeBufferPointer { h in
            try dims.withUnsafeBufferPointer { d in
                try neurons.withUnsafeBufferPointer { try body(GroupScores(heads: h, dims: d, neurons: $0)) }
            }
        }
    }

    mutating func withOutputs<R>(_ body: (GroupOutputs) throws -> R) rethrows -> R {
        try heads.withUnsafeMutableBufferPointer { h in
            try dims.withUnsafeMutableBufferPointer { d in
                try neurons.withUnsafeMutableBufferPointer { try body(GroupOutputs(heads: h, dims: d, neurons: $0)) }
            }
        }
    }
}


extension Solver {
    /// One step on owned arrays; returns the proximal factors and the copy of the scores.
    @discardableResult
    mutating func step(_ scores: GroupData, gateGradient: [Double]? = nil, lr: Double = 1e-3,
                       epoch: Double) throws -> (factors: GroupData, copy: GroupData) {
        var factors = GroupData(spec, fill: -1), copy = factors
        try scores.withScores { s in
            try factors.withOutputs { f in
                try copy.withOutputs { c in
                    if let g = gateGradient {
                        try g.withUnsafeBufferPointer {
                            try step(scores: s, gateGradient: $0, learningRate: lr, epoch: epoch, factors: f, scoresCopy: c)
                        }
                    } else {
                        try step(scores: s, gateGradient: nil, learningRate: lr, epoch: epoch, factors: f, scoresCopy: c)
                    }
                }
            }
        }
        return (factors, copy)
    }

    mutating func sample(epoch: Double) throws -> [Double] {
        var gates = [Double](repeating: -1, count: 2 * spec.depth)
        try gates.withUnsafeMutableBufferPointer { try sampleGates(epoch: epoch, into: $0) }
        return gates
    }
}
