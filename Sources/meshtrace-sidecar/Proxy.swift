import MeshCore
import MeshExporter
import NIOCore
import NIOHTTP1
import NIOPosix

/// Where a listener sends a request, and how its span is labelled.
struct Upstream: Sendable {
    /// `host:port`, as `upstream_cluster` and `peer.address` name it.
    var name: String
    var address: SocketAddress
    var kind: SpanKind
    var peerService: String
    var cluster: String
}

/// What every connection of a listener shares: the exporter, the routes, the limits.
struct ProxyRules: Sendable {
    let exporter: MeshExporter
    /// The upstream for a request's `Host` (lower-cased, without port); nil answers 404 `NR`.
    let route: @Sendable (String) -> Upstream?
    /// How long an upstream may take to answer before the request fails with 504 `UT`.
    let upstreamTimeout: TimeAmount
    let connectTimeout: TimeAmount

    /// Hop-by-hop headers (RFC 9110 §7.6.1), the framing the encoders set again, and
    /// the trace context the proxy writes itself.
    static let notForwarded: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect",
        "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
    ]

    /// `headers` without the hop-by-hop ones (and those their `Connection` header names).
    static func forwardable(_ headers: HTTPHeaders) -> HTTPHeaders {
        let named = headers[canonicalForm: "connection"].map { $0.lowercased() }
        var kept = HTTPHeaders()
        for (name, value) in headers {
            let lowered = name.lowercased()
            if notForwarded.contains(lowered) || named.contains(where: { $0 == lowered }) { continue }
            kept.add(name: name, value: value)
        }
        if headers[canonicalForm: "transfer-encoding"].last?.lowercased() == "chunked" {
            kept.add(name: "transfer-encoding", value: "chunked")
        }
        return kept
    }
}

/// One request through the proxy, from its head to the end of its response; it
/// becomes the span recorded when both have ended.
final class Exchange {
    let start = WallClock.nowNanoseconds()
    let traceID: TraceID
    let spanID: SpanID
    let parentSpanID: SpanID
    let sampled: Bool
    let traceState: String
    let requestID: String
    let method: String
    let path: String
    let userAgent: String
    let host: String
    let upstream: Upstream?
    let keepAlive: Bool
    var requestBytes = 0
    var responseBytes = 0
    var status: UInt16 = 0
    var flags = "-"
    /// Set when the upstream failed after its response had started.
    var failed = false
    var requestEnded = false
    var responseStarted = false
    var responseEnded = false
    var timeout: Scheduled<Void>?

    init(head: HTTPRequestHead, upstream: Upstream?, host: String, exporter: MeshExporter) {
        let headers = head.headers
        let parent = headers.first(name: "traceparent").flatMap { TraceContext(traceparent: $0, tracestate: headers.first(name: "tracestate")) }
            ?? TraceContext(b3: { headers.first(name: $0) })
        traceID = parent?.traceID ?? TraceID(high: .random(in: 1...UInt64.max), low: .random(in: 0...UInt64.max))
        spanID = SpanID(.random(in: 1...UInt64.max))
        parentSpanID = parent?.spanID ?? .zero
        (sampled, traceState) = exporter.decide(traceID: traceID, parent: parent)
        requestID = headers.first(name: "x-request-id") ?? Self.newRequestID()
        method = head.method.rawValue
        path = head.uri.firstIndex(of: "?").map { String(head.uri[..<$0]) } ?? head.uri
        userAgent = headers.first(name: "user-agent") ?? ""
        self.host = host
        self.upstream = upstream
        keepAlive = head.isKeepAlive
    }

    /// The head forwarded upstream: the request's own, with the hop-by-hop headers
    /// gone and the context of this proxy's span (and the request id) set.
    func upstreamHead(_ head: HTTPRequestHead) -> HTTPRequestHead {
        var headers = ProxyRules.forwardable(head.headers)
        let context = TraceContext(traceID: traceID, spanID: spanID, flags: sampled ? 1 : 0, traceState: traceState)
        for (name, value) in context.w3cHeaders { headers.replaceOrAdd(name: name, value: value) }
        headers.replaceOrAdd(name: "x-request-id", value: requestID)
        return HTTPRequestHead(version: .http1_1, method: head.method, uri: head.uri, headers: headers)
    }

    /// Records the exchange's span; `peerAddress` is the downstream's for a SERVER span.
    func record(into exporter: MeshExporter, downstreamAddress: String) {
        let kind = upstream?.kind ?? .client
        exporter.record(RequestSpan(
            traceID: traceID, spanID: spanID, parentSpanID: parentSpanID,
            name: "\(method) \(Self.template(path))", kind: kind, startTime: start, endTime: WallClock.nowNanoseconds(),
            httpStatus: status, failed: failed || status >= 500, method: method, path: path,
            peerService: kind == .client ? (upstream?.peerService ?? host) : "", upstreamCluster: upstream?.cluster ?? "",
            peerAddress: kind == .server ? downstreamAddress : (upstream?.name ?? ""), responseFlags: flags,
            requestID: requestID, userAgent: userAgent, requestBytes: UInt64(requestBytes), responseBytes: UInt64(responseBytes),
            mutualTLS: false, traceState: traceState),
            exported: sampled)
    }

    /// The path with its numeric and id-like segments as `{id}`: an operation name of bounded cardinality.
    static func template(_ path: String) -> String {
        path.split(separator: "/", omittingEmptySubsequences: false).map { segment -> String in
            let digits = segment.filter(\.isNumber).count
            return !segment.isEmpty && (digits == segment.count || (segment.count >= 16 && digits * 3 >= segment.count)) ? "{id}" : String(segment)
        }.joined(separator: "/")
    }

    /// A random (version 4) UUID in its text form, for `x-request-id`.
    static func newRequestID() -> String {
        var random = SystemRandomNumberGenerator()
        let high = random.next() & ~0xF000 | 0x4000
        let low = random.next() & ~(0xC << 60) | (0x8 << 60)
        let digits = Array("0123456789abcdef".utf8)
        return String(unsafeUninitializedCapacity: 36) { out in
            var index = 0
            for (value, groups) in [(high, [8, 4, 4]), (low, [4, 12])] {
                var shift = 64
                for group in groups {
                    if index > 0 {
                        out[index] = UInt8(ascii: "-")
                        index += 1
                    }
                    for _ in 0..<group {
                        shift -= 4
                        out[index] = digits[Int(value >> UInt64(shift) & 0xF)]
                        index += 1
                    }
                }
            }
            return index
        }
    }
}

/// Wall-clock time, as spans record it.
enum WallClock {
    static func nowNanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}

/// The downstream side of a connection to a listener: reads requests, forwards them
/// to their upstream over a connection of its own (kept while the next request goes
/// to the same upstream), writes the responses back, and records a span per request.
///
/// Both sides run on the downstream channel's event loop, so nothing is shared
/// between threads. Each side stops reading while the other cannot take what it
/// would read, so a slow reader on either end holds the proxy's memory at a few
/// buffers per connection.
final class DownstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let rules: ProxyRules
    private var context: ChannelHandlerContext?
    private var exchange: Exchange?
    private var upstream: UpstreamHandler?
    private var readHeld = false
    private var downstreamAddress = ""

    init(rules: ProxyRules) {
        self.rules = rules
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if let remote = context.channel.remoteAddress { downstreamAddress = Listeners.text(remote) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            begin(head, context: context)
        case .body(let body):
            guard let exchange, !exchange.requestEnded else { return }
            exchange.requestBytes += body.readableBytes
            // Once answered (an early error), the rest of the request is read and dropped.
            if !exchange.responseEnded { upstream?.send(.body(.byteBuffer(body)), flush: false) }
        case .end(let trailers):
            guard let exchange, !exchange.requestEnded else { return }
            exchange.requestEnded = true
            if exchange.responseEnded {
                finish(exchange)
            } else {
                upstream?.send(.end(trailers), flush: true)
            }
        }
    }

    /// What one read brought is sent on in one write (`end` flushes at once).
    func channelReadComplete(context: ChannelHandlerContext) {
        upstream?.flush()
        context.fireChannelReadComplete()
    }

    private func begin(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let authority = head.headers.first(name: "host") ?? ""
        let host = (authority.split(separator: ":").first.map { $0.lowercased() }) ?? ""
        let route = rules.route(host)
        let exchange = Exchange(head: head, upstream: route, host: host, exporter: rules.exporter)
        self.exchange = exchange
        guard let route else {
            exchange.flags = "NR"
            answer(exchange, .notFound, "no route to \(host.isEmpty ? "(no host)" : host)\n")
            return
        }
        if let upstream, upstream.reusable(for: route.name) {
            upstream.send(.head(exchange.upstreamHead(head)), flush: false)
        } else {
            upstream?.close()
            let connection = UpstreamHandler(name: route.name, downstream: self)
            upstream = connection
            connection.send(.head(exchange.upstreamHead(head)), flush: false)
            connect(connection, to: route.address, on: context.eventLoop)
        }
        if head.headers.first(name: "expect")?.lowercased() == "100-continue" {
            // The proxy asks for the body itself, as Envoy does; the upstream gets no `Expect`.
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .continue))), promise: nil)
        }
        exchange.timeout = context.eventLoop.assumeIsolated().scheduleTask(in: rules.upstreamTimeout) { [weak self, weak exchange] in
            guard let self, let exchange, self.exchange === exchange, !exchange.responseEnded else { return }
            exchange.flags = "UT"
            self.upstreamFailed(status: .gatewayTimeout, "upstream request timeout\n")
        }
    }

    private func connect(_ connection: UpstreamHandler, to address: SocketAddress, on eventLoop: any EventLoop) {
        let bound = NIOLoopBound(connection, eventLoop: eventLoop)
        ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(rules.connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(bound.value)
                }
            }
            .connect(to: address)
            .whenFailure { error in bound.value.connectFailed(error) }
    }

    // MARK: From the upstream connection

    func upstreamHead(_ head: HTTPResponseHead) {
        guard let exchange, !exchange.responseEnded, let context else { return }
        exchange.status = UInt16(truncatingIfNeeded: head.status.code)
        exchange.responseStarted = true
        var headers = ProxyRules.forwardable(head.headers)
        if !exchange.keepAlive { headers.replaceOrAdd(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: head.status, headers: headers))), promise: nil)
    }

    func upstreamBody(_ body: ByteBuffer) {
        guard let exchange, !exchange.responseEnded, let context else { return }
        exchange.responseBytes += body.readableBytes
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
    }

    /// The upstream's read is done: what it brought goes out in one write.
    func flush() {
        context?.flush()
    }

    func upstreamEnd(_ trailers: HTTPHeaders?) {
        guard let exchange, !exchange.responseEnded else { return }
        endResponse(exchange, .end(trailers))
    }

    /// The upstream could not be reached, went away, or took too long: a 503 (or the
    /// given status) when nothing was sent yet, a closed connection when a response
    /// had started.
    func upstreamFailed(status: HTTPResponseStatus, _ message: String) {
        guard let exchange, !exchange.responseEnded else { return }
        upstream?.close()
        upstream = nil
        if exchange.responseStarted {
            // Half a response cannot be finished honestly: the downstream sees the connection close.
            exchange.failed = true
            exchange.responseEnded = true
            exchange.requestEnded = true
            finish(exchange)
            context?.close(promise: nil)
        } else {
            answer(exchange, status, message)
        }
    }

    func upstreamConnectionFailed(_ connection: UpstreamHandler, _ error: any Error) {
        guard connection === upstream else { return }
        exchange?.flags = "UF"
        upstreamFailed(status: .serviceUnavailable, "upstream connect error: \(error)\n")
    }

    func upstreamClosed(_ connection: UpstreamHandler) {
        guard connection === upstream else { return }
        upstream = nil
        if let exchange, !exchange.responseEnded {
            exchange.flags = "UC"
            upstreamFailed(status: .serviceUnavailable, "upstream connect error: connection terminated\n")
        }
    }

    /// The downstream can take more: the upstream may read again.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { upstream?.resume() }
        context.fireChannelWritabilityChanged()
    }

    var canWrite: Bool { context?.channel.isWritable ?? false }

    /// The upstream can take more: the downstream may read again.
    func resume() {
        guard readHeld, let context else { return }
        readHeld = false
        context.read()
    }

    func read(context: ChannelHandlerContext) {
        if let upstream, !upstream.canWrite, exchange != nil {
            readHeld = true
        } else {
            context.read()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let exchange {
            if !exchange.responseEnded { exchange.flags = "DC" }
            exchange.requestEnded = true
            exchange.responseEnded = true
            finish(exchange)
        }
        upstream?.close()
        upstream = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    // MARK: Responses

    /// Answers `exchange` from the proxy itself.
    private func answer(_ exchange: Exchange, _ status: HTTPResponseStatus, _ message: String) {
        guard let context else { return }
        exchange.status = UInt16(status.code)
        var headers = HTTPHeaders([("content-type", "text/plain"), ("content-length", "\(message.utf8.count)")])
        if !exchange.keepAlive { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: message)))), promise: nil)
        endResponse(exchange, .end(nil))
    }

    /// Writes the response's end. The span is recorded first when the request has
    /// ended too: writing the end lets the pipeline hand over the next request at once.
    private func endResponse(_ exchange: Exchange, _ end: HTTPServerResponsePart) {
        guard let context else { return }
        exchange.responseEnded = true
        exchange.timeout?.cancel()
        if exchange.requestEnded { finish(exchange) }
        if exchange.keepAlive {
            context.writeAndFlush(wrapOutboundOut(end), promise: nil)
        } else {
            let channel = context.channel
            let written = context.eventLoop.makePromise(of: Void.self)
            written.futureResult.whenComplete { _ in channel.close(promise: nil) }
            context.writeAndFlush(wrapOutboundOut(end), promise: written)
        }
    }

    private func finish(_ exchange: Exchange) {
        exchange.timeout?.cancel()
        if self.exchange === exchange { self.exchange = nil }
        exchange.record(into: rules.exporter, downstreamAddress: downstreamAddress)
        if readHeld, let context {
            readHeld = false
            context.read()
        }
    }
}

/// The upstream side: one HTTP/1.1 client connection, used for one request at a time.
final class UpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    /// `host:port` it is connected to.
    let name: String
    private weak var downstream: DownstreamHandler?
    private var context: ChannelHandlerContext?
    private var active = false
    private var closed = false
    /// Parts written before the connection was up.
    private var pending: [(HTTPClientRequestPart, Bool)] = []
    private var readHeld = false
    /// Whether the last response allows another request on this connection.
    private var keepAlive = true
    /// Inside a 1xx response, which the proxy does not pass on (it answers `Expect` itself).
    private var informational = false

    init(name: String, downstream: DownstreamHandler) {
        self.name = name
        self.downstream = downstream
    }

    func reusable(for name: String) -> Bool { name == self.name && !closed && keepAlive }

    var canWrite: Bool { active && (context?.channel.isWritable ?? false) }

    func send(_ part: HTTPClientRequestPart, flush: Bool) {
        guard !closed else { return }
        guard active, let context else {
            pending.append((part, flush))
            return
        }
        if flush {
            context.writeAndFlush(wrapOutboundOut(part), promise: nil)
        } else {
            context.write(wrapOutboundOut(part), promise: nil)
        }
    }

    func flush() {
        if active && !closed { context?.flush() }
    }

    func close() {
        guard !closed else { return }
        closed = true
        downstream = nil
        context?.close(promise: nil)
    }

    func connectFailed(_ error: any Error) {
        guard !closed else { return }
        closed = true
        downstream?.upstreamConnectionFailed(self, error)
    }

    func resume() {
        guard readHeld, let context else { return }
        readHeld = false
        context.read()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { becameActive(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        becameActive(context)
        context.fireChannelActive()
    }

    private func becameActive(_ context: ChannelHandlerContext) {
        guard !active else { return }
        active = true
        if closed {
            context.close(promise: nil)
            return
        }
        let parts = pending
        pending = []
        for (part, flush) in parts { send(part, flush: flush) }
        context.flush()
        downstream?.resume()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closed else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            if (100..<200).contains(head.status.code) {
                informational = true
                return
            }
            keepAlive = head.isKeepAlive
            downstream?.upstreamHead(head)
        case .body(let body):
            downstream?.upstreamBody(body)
        case .end(let trailers):
            if informational {
                informational = false
                return
            }
            let downstream = self.downstream
            // The server closes after this response: a new request needs a new connection
            // (and the close is not news to the downstream).
            if !keepAlive { close() }
            downstream?.upstreamEnd(trailers)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        downstream?.flush()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if let downstream, !downstream.canWrite {
            readHeld = true
        } else {
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { downstream?.resume() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        // After `close()` the downstream is gone and not told.
        downstream?.upstreamClosed(self)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
