// swift-tools-version:6.1
// Builds the protoc plugins that proto/generate.sh uses. Kept apart from the main
// package so that building or testing meshtrace never compiles them.
import PackageDescription

let package = Package(
    name: "meshtrace-proto-tools",
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", exact: "2.4.1"),
    ],
    targets: [
        .executableTarget(name: "noop", path: "noop")
    ]
)
