import GRPCNIOTransportHTTP2
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix

/// The OTLP/gRPC listener: a TCP listener whose connections pass the security gate
/// (when TLS is on) before gRPC's HTTP/2 pipeline.
struct GatedGRPCListener: HTTP2ServerTransport.ListenerFactory {
    let address: NIOCore.SocketAddress
    let security: ConnectionSecurity?
    /// The loop that accepts, and serves every connection accepted.
    let loop: any EventLoop

    var eventLoopGroup: any EventLoopGroup { loop }

    func makeListeningChannel(
        listenerConfigurator: HTTP2ServerTransport.ListenerConfigurator,
        connectionConfigurator: HTTP2ServerTransport.ConnectionConfigurator
    ) async throws -> NIOAsyncChannel<HTTP2ServerTransport.ConnectionConfigurator.ConnectionChannel, Never> {
        let security = self.security
        return try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Each lane of the receiver listens on the address with a socket of its own.
            .serverChannelOption(.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
            .serverChannelInitializer { listenerConfigurator.configure(channel: $0) }
            .bind(to: address) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let security {
                        try security.addGate(to: channel, .h2, receiver: "otlp-grpc")
                    }
                }.flatMap {
                    connectionConfigurator.configure(channel: channel, tls: .none)
                }
            }
    }
}

/// A Hummingbird connection that passes the security gate first.
struct GatedChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    var base: Base
    let security: ConnectionSecurity
    let receiver: String

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try security.addGate(to: channel, .http1, receiver: receiver)
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Base.Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

extension GatedChannel: HTTPChannelHandler where Base: HTTPChannelHandler {
    var responder: HTTPChannelHandler.Responder { base.responder }
}

/// A request context that knows which connection the request came on.
struct IngestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let remoteAddress: NIOCore.SocketAddress?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}
