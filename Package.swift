// swift-tools-version:6.2
import PackageDescription

let package = Package(
    name: "meshtrace",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "meshtrace-collector", targets: ["meshtrace-collector"]),
        .executable(name: "meshtrace", targets: ["meshtrace"]),
        .executable(name: "meshtrace-bench", targets: ["meshtrace-bench"]),
        .executable(name: "meshtrace-sidecar", targets: ["meshtrace-sidecar"]),
        .library(name: "Collector", targets: ["Collector"]),
        .library(name: "MeshSim", targets: ["MeshSim"]),
        .library(name: "MeshExporter", targets: ["MeshExporter"]),
        // libmeshexporter.so: MeshExporter behind the C interface of meshexporter.h.
        .library(name: "meshexporter", type: .dynamic, targets: ["CMeshExporter"]),
    ],
    traits: [
        // `meshtrace-bench exporter-compare`: MeshExporter beside swift-otel in one run. Off
        // by default, so that neither the tests nor the other builds compile swift-otel.
        .trait(name: "SwiftOTelComparison", description: "Builds meshtrace-bench exporter-compare, which records the same spans through swift-otel."),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", exact: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", exact: "2.4.1"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", exact: "2.9.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams", exact: "6.2.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.30.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.10.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.0.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.3.0"),
        .package(url: "https://github.com/swift-otel/swift-otel", exact: "1.6.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
    ],
    targets: [
        // C shims over the system compression libraries (Debian: libzstd-dev, liblz4-dev).
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        // The CPU's CRC-32C instruction, where it has one.
        .target(name: "CCRC32C"),
        // Counts a thread's heap allocations (benchmarks only: it replaces malloc in the executable).
        .target(name: "CAllocationCounter"),
        // Cache prefetch hints for the exporter's ring, the OTLP decoder and the ingest path's tables.
        .target(name: "CCacheHints"),

        .target(name: "Compression", dependencies: ["CZstd", "CLZ4", "CZlib"]),
        .target(name: "MeshCore", dependencies: ["CCRC32C", "CCacheHints"]),
        .target(
            name: "OTLPWire",
            dependencies: [
                "MeshCore",
                "CCacheHints",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ]
        ),
        .target(name: "SegmentStore", dependencies: ["MeshCore", "Compression", "OTLPWire"]),
        .target(name: "GoldenSignals", dependencies: ["SegmentStore", "MeshCore", "Compression", "OTLPWire"]),
        .target(name: "QueryEngine", dependencies: ["SegmentStore", "GoldenSignals", "Sampling", "MeshCore", "OTLPWire"]),
        .target(name: "Sampling", dependencies: ["MeshCore", "SegmentStore", "CCacheHints", .product(name: "Yams", package: "Yams")]),
        .target(name: "MeshSim", dependencies: ["MeshCore", "OTLPWire"]),
        // SPIFFE IDs, the dev CA, and verification of workload certificates.
        .target(
            name: "MeshIdentity",
            dependencies: [
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // meshexporter.h, and the Swift implementation of it.
        .target(name: "MeshExporterABI"),
        .target(name: "CMeshExporter", dependencies: ["MeshExporter", "MeshExporterABI", "MeshCore"]),
        // The exporter a proxy embeds: ring buffer, OTLP encoding, HTTP and gRPC transports.
        .target(
            name: "MeshExporter",
            dependencies: [
                "MeshCore", "OTLPWire", "Compression", "CCacheHints",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .target(
            name: "Collector",
            dependencies: [
                "SegmentStore", "QueryEngine", "GoldenSignals", "Sampling", "OTLPWire", "MeshCore", "Compression", "MeshIdentity",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .executableTarget(
            name: "meshtrace-collector",
            dependencies: [
                "Collector", "MeshCore", "SegmentStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "meshtrace",
            dependencies: [
                "Collector", "QueryEngine", "SegmentStore", "Sampling", "MeshSim", "OTLPWire", "MeshCore", "MeshExporter", "MeshIdentity",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            ]
        ),
        .executableTarget(
            name: "meshtrace-sidecar",
            dependencies: [
                "MeshExporter", "MeshCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "meshtrace-bench",
            dependencies: [
                "SegmentStore", "QueryEngine", "GoldenSignals", "Sampling", "MeshSim", "OTLPWire", "MeshCore", "Compression",
                "MeshExporter", "CAllocationCounter", "MeshIdentity", "Collector",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "OTel", package: "swift-otel", condition: .when(traits: ["SwiftOTelComparison"])),
                .product(name: "Tracing", package: "swift-distributed-tracing", condition: .when(traits: ["SwiftOTelComparison"])),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle", condition: .when(traits: ["SwiftOTelComparison"])),
            ]
        ),
        // Differential fuzzing of the OTLP decoder against swift-protobuf (Fuzz/run.sh).
        .executableTarget(
            name: "meshtrace-fuzz-otlp",
            dependencies: ["OTLPWire", "MeshCore", .product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
        .testTarget(
            name: "MeshtraceTests",
            dependencies: [
                "Compression", "MeshCore", "OTLPWire", "SegmentStore", "QueryEngine", "GoldenSignals", "Sampling", "MeshSim", "Collector",
                "MeshExporter", "MeshIdentity",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            resources: [.copy("Fixtures")]
        ),
    ]
)
