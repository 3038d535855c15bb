// C entry points of the cost model.

/// Exact MACs of a plan, broken down. Shapes: spec (13,), convention (5,), plan (depth, 6)
/// int64, layers out (depth, 12) float64, globals out (3,) float64. Writes the total to `total`.
@c(uvc_cost_exact)
public func uvcCostExact(
    _ specData: UnsafePointer<Int64>, _ specShape: UnsafePointer<Int>, _ specDims: Int,
    _ convData: UnsafePointer<Double>, _ convShape: UnsafePointer<Int>, _ convDims: Int,
    _ planData: UnsafePointer<Int64>, _ planShape: UnsafePointer<Int>, _ planDims: Int,
    _ layersData: UnsafeMutablePointer<Double>, _ layersShape: UnsafePointer<Int>, _ layersDims: Int,
    _ globalsData: UnsafeMutablePointer<Double>, _ globalsShape: UnsafePointer<Int>, _ globalsDims: Int,
    _ total: UnsafeMutablePointer<Double>,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let model = try costModel(ArrayArg("spec", specData, specShape, specDims),
                                  ArrayArg("convention", convData, convShape, convDims))
        let depth = model.spec.depth
        let planArg = ArrayArg("plan", planData, planShape, planDims)
        try planArg.expect([depth, LayerPlan.encodedCount])
        let plan = try ArchPlan(encoded: planArg.buffer, spec: model.spec)
        let layers = OutArg("layers_out", layersData, layersShape, layersDims)
        try layers.expect([depth, CostModel.Component.allCases.count])
        let globals = OutArg("globals_out", globalsData, globalsShape, globalsDims)
        try globals.expect([CostModel.GlobalComponent.allCases.count])
        total.pointee = model.exact(plan, layers: layers.buffer, globals: globals.buffer)
    }
}

/// Expected MACs and gradient. Shapes: x and grad out (6, depth) float64 (rows: heads,
/// v_dim, neurons, attn_gate, mlp_gate, tokens). Writes the expected MACs to `total`.
@c(uvc_cost_expected)
public func uvcCostExpected(
    _ specData: UnsafePointer<Int64>, _ specShape: UnsafePointer<Int>, _ specDims: Int,
    _ convData: UnsafePointer<Double>, _ convShape: UnsafePointer<Int>, _ convDims: Int,
    _ xData: UnsafePointer<Double>, _ xShape: UnsafePointer<Int>, _ xDims: Int,
    _ gradData: UnsafeMutablePointer<Double>, _ gradShape: UnsafePointer<Int>, _ gradDims: Int,
    _ total: UnsafeMutablePointer<Double>,
    _ message: UnsafeMutablePointer<CChar>, _ capacity: Int
) -> Int32 {
    cCall(message, capacity) { () throws(UVCError) in
        let model = try costModel(ArrayArg("spec", specData, specShape, specDims),
                                  ArrayArg("convention", convData, convShape, convDims))
        let shape = [RelaxedField.allCases.count, model.spec.depth]
        let x = ArrayArg("x", xData, xShape, xDims)
        try x.expect(shape)
        let grad = OutArg("out", gradData, gradShape, gradDims)
        try grad.expect(shape)
        try model.validateRelaxed(x.buffer)
        total.pointee = model.expected(x.buffer, gradient: grad.buffer)
    }
}

func costModel(_ spec: ArrayArg<Int64>, _ convention: ArrayArg<Double>) throws(UVCError) -> CostModel {
    try spec.expect([ViTSpec.encodedCount])
    try convention.expect([CostConvention.encodedCount])
    return CostModel(spec: try ViTSpec(encoded: spec.buffer),
                     convention: try CostConvention(encoded: convention.buffer))
}
