// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "uvc",
    products: [
        // The CPython extension: the C bridge with the Swift core linked into one .so.
        .library(name: "uvcnative", type: .dynamic, targets: ["CPyBridge"]),
    ],
    targets: [
        .systemLibrary(
            name: "CPython",
            path: "Sources/CPython",
            pkgConfig: "python3",
            providers: [.apt(["python3-dev"])]
        ),
        .systemLibrary(
            name: "COpenBLAS",
            path: "Sources/COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // The mathematics: cost model, solver, gates, USDC, least-squares reconstruction (OpenBLAS
        // and its LAPACK). No C ABI, no Python.
        .target(name: "UVCNative", dependencies: ["COpenBLAS"], path: "Sources/UVCNative"),
        // What crosses the boundary: the C declarations (a header only) ...
        .target(name: "UVCABI", path: "Sources/UVCABI"),
        // ... the core's entry points behind them ...
        .target(name: "UVCExports", dependencies: ["UVCNative", "UVCABI"], path: "Sources/UVCExports"),
        // ... and the CPython glue that calls them.
        .target(name: "CPyBridge", dependencies: ["UVCExports", "CPython"], path: "Sources/CPyBridge"),
        .testTarget(
            name: "UVCNativeTests",
            dependencies: ["UVCNative"],
            path: "Tests/UVCNativeTests"
        ),
    ]
)
