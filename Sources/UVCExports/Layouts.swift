// The names and layouts Python needs, listed by the core as JSON text, so that no Python file
// restates an order the core owns.
import UVCNative

enum Layouts {
    /// Module-wide layouts: encodings of spec, convention and plan rows; cost components and
    /// relaxed fields; USDC groupings; the solver's config fields with kinds and defaults.
    nonisolated(unsafe) static let text: UnsafeBufferPointer<UInt8> = {
        let bytes = Array(json.utf8)
        let out = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: bytes.count)
        _ = out.initialize(from: bytes)
        return UnsafeBufferPointer(out)
    }()

    private static var json: String {
        let defaults = try! SolverConfig()  // the defaults are valid by construction (tested)
        let values = defaults.encoded
        var config: [String] = []
        var f = 0
        let fields = SolverConfig.Field.allCases
        while f < fields.count {
            // Consecutive slots of one name (lr_counts) form one entry.
            var n = 1
            while f + n < fields.count && fields[f + n].name == fields[f].name { n += 1 }
            config.append(object([("name", string(fields[f].name)), ("kind", string(fields[f].kind)), ("count", "\(n)"),
                                  ("default", list(values[f..<(f + n)].map { "\($0)" })),
                                  ("choices", list(fields[f].choices.map(string)))]))
            f += n
        }
        return object([
            ("spec", strings(ViTSpec.fieldNames)), ("pools", strings(ViTSpec.Pool.names)), ("convention", strings(CostConvention.fieldNames)),
            ("plan_row", strings(LayerPlan.fieldNames)), ("layer_components", strings(CostModel.Component.names)),
            ("global_components", strings(CostModel.GlobalComponent.names)),
            ("relaxed_fields", strings(RelaxedField.allCases.map(\.name))),
            ("groupings", strings(GroupPartition.Grouping.allCases.map(\.name))), ("max_size", "\(ViTSpec.maxSize)"),
            ("latency_table", strings(LatencyModel.argumentNames)),
            ("solver_config", list(config)), ("zlr_schedule", list(defaults.zLRSchedule.map { "\($0)" })),
        ])
    }

    /// One solver's array layouts: its per-group arrays, `summary` and `fields`, by name and shape.
    static func solver(groups: [(name: String, shape: [Int])], summary: [(name: String, shape: [Int])],
                       fields: [(name: String, shape: [Int])]) -> String {
        func entries(_ e: [(name: String, shape: [Int])]) -> String {
            list(e.map { list([string($0.name), list($0.shape.map { "\($0)" })]) })
        }
        return object([("groups", entries(groups)), ("summary", entries(summary)), ("fields", entries(fields))])
    }

    // Names are plain ASCII identifiers: no escaping needed.
    private static func string(_ s: String) -> String { "\"\(s)\"" }
    private static func strings(_ s: [String]) -> String { list(s.map(string)) }
    private static func list(_ items: [String]) -> String { "[" + items.joined(separator: ", ") + "]" }
    private static func object(_ items: [(String, String)]) -> String {
        "{" + items.map { "\(string($0.0)): \($0.1)" }.joined(separator: ", ") + "}"
    }
}
