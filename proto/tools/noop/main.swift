print("build the plugins with: swift build --product protoc-gen-swift --product protoc-gen-grpc-swift-2")
