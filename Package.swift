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
        .target(
            name: "UVCNative",
            dependencies: ["COpenBLAS"],
            path: "Sources/UVCNative"
        ),
        .target(
            name: "CPyBridge",
            dependencies: ["UVCNative", "CPython"],
            path: "Sources/CPyBridge"
        ),
        .testTarget(
            name: "UVCNativeTests",
            dependencies: ["UVCNative"],
            path: "Tests/UVCNativeTests"
        ),
    ]
)
