// swift-tools-version:6.0
import PackageDescription

// The C header in include/ is the one source of truth for the public API: the CDiffusion target
// re-exports it to Swift, and every @_cdecl in Sources/Diffusion is checked against it.
let package = Package(
    name: "libdiffusion",
    products: [
        .library(name: "diffusion", type: .dynamic, targets: ["Diffusion"]),
        // Installed as `diffusion` (SwiftPM product names must differ from the library's).
        .executable(name: "diffusion-cli", targets: ["DiffusionCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .target(name: "CDiffusion", path: "Sources/CDiffusion"),
        .target(
            name: "DiffusionCore",
            dependencies: ["CDiffusion"],
            path: "Sources/DiffusionCore",
            linkerSettings: [.linkedLibrary("m")]
        ),
        .target(
            name: "Diffusion",
            dependencies: ["DiffusionCore", "CDiffusion"],
            path: "Sources/Diffusion",
            exclude: ["exports.map"],
            linkerSettings: [.unsafeFlags([
                "-Xlinker", "--version-script=\(Context.packageDirectory)/Sources/Diffusion/exports.map",
                "-Xlinker", "-soname=libdiffusion.so.0",
                // Worker threads stay parked in the library's code: dlclose must not unmap it.
                "-Xlinker", "-z", "-Xlinker", "nodelete",
            ])]
        ),
        .executableTarget(
            name: "DiffusionCLI",
            dependencies: ["DiffusionCore", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/DiffusionCLI"
        ),
        .testTarget(name: "DiffusionCoreTests", dependencies: ["DiffusionCore"], path: "Tests/DiffusionCoreTests"),
    ],
    swiftLanguageModes: [.v5]
)
