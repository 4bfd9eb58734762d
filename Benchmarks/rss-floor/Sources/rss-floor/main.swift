import ArgumentParser
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// Answers every request with `ok`.
final class Answer: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        var head = HTTPResponseHead(version: .http1_1, status: .ok)
        head.headers.add(name: "content-length", value: "2")
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "ok")))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}

@main
struct Floor: AsyncParsableCommand {
    @Option(help: "Port to listen on (127.0.0.1).")
    var port = 25_500

    func run() async throws {
        let logger = Logger(label: "rss-floor")
        // A TLS client context, as the sidecar's exporter makes for an https collector.
        _ = try NIOSSLContext(configuration: TLSConfiguration.makeClientConfiguration())
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap { channel.pipeline.addHandler(Answer()) }
            }
            .bind(host: "127.0.0.1", port: port).get()
        logger.info("listening on 127.0.0.1:\(port)")
        try await channel.closeFuture.get()
    }
}
