import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import MeshCore
@_spi(CABI) import MeshExporter
import MeshExporterABI

// The C interface declared in meshexporter.h. An exporter handle is a retained
// `MeshExporter`; the calls that wait (flush, stop) block the calling C thread.

/// Copies `message` into the caller's `error` buffer, NUL-terminated.
private func fail(_ message: String, _ error: UnsafeMutablePointer<CChar>?, _ size: Int) -> OpaquePointer? {
    guard let error, size > 0 else { return nil }
    let bytes = Array(message.utf8.prefix(size - 1))
    for (index, byte) in bytes.enumerated() { error[index] = CChar(bitPattern: byte) }
    error[bytes.count] = 0
    return nil
}

private func exporter(_ handle: OpaquePointer) -> MeshExporter {
    Unmanaged<MeshExporter>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
}

/// Runs `work` to completion from a thread outside Swift concurrency.
private func block(_ work: @escaping @Sendable () async -> Void) {
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        await work()
        done.signal()
    }
    done.wait()
}

@_cdecl("meshexporter_start")
public func meshexporter_start(
    _ config: UnsafePointer<meshexporter_config>?, _ error: UnsafeMutablePointer<CChar>?, _ errorSize: Int
) -> OpaquePointer? {
    guard let config = config?.pointee else { return fail("no configuration", error, errorSize) }
    guard let endpoint = config.endpoint.map({ String(cString: $0) }), !endpoint.isEmpty else {
        return fail("endpoint is required", error, errorSize)
    }
    guard let service = config.service_name.map({ String(cString: $0) }), !service.isEmpty else {
        return fail("service_name is required", error, errorSize)
    }
    let transport: MeshExporter.Configuration.Transport
    switch config.transport {
    case Int32(MESHEXPORTER_HTTP.rawValue): transport = .http
    case Int32(MESHEXPORTER_GRPC.rawValue): transport = .grpc
    default: return fail("transport \(config.transport) is neither MESHEXPORTER_HTTP nor MESHEXPORTER_GRPC", error, errorSize)
    }
    var configuration = MeshExporter.Configuration(endpoint: endpoint, transport: transport, serviceName: service)
    switch config.compression {
    case Int32(MESHEXPORTER_COMPRESSION_NONE.rawValue): configuration.compression = .none
    case Int32(MESHEXPORTER_COMPRESSION_GZIP.rawValue): configuration.compression = .gzip
    case Int32(MESHEXPORTER_COMPRESSION_ZSTD.rawValue): configuration.compression = .zstd
    default: return fail("compression \(config.compression) is not one of MESHEXPORTER_COMPRESSION_*", error, errorSize)
    }
    if var attribute = config.resource_attributes {
        while let key = attribute.pointee {
            guard let value = attribute.successor().pointee else { return fail("resource_attributes: \(String(cString: key)) has no value", error, errorSize) }
            configuration.resourceAttributes.append((String(cString: key), String(cString: value)))
            attribute += 2
        }
    }
    if config.memory_limit > 0 { configuration.memoryLimit = config.memory_limit }
    if config.flush_interval_ms > 0 { configuration.flushInterval = .milliseconds(Int64(config.flush_interval_ms)) }
    guard (0...1).contains(config.sampling_probability) else {
        return fail("sampling_probability \(config.sampling_probability) is not between 0 and 1", error, errorSize)
    }
    configuration.samplingProbability = config.sampling_probability
    let certificate = config.tls_cert_file.map { String(cString: $0) }, key = config.tls_key_file.map { String(cString: $0) }
    if let ca = config.tls_ca_file.map({ String(cString: $0) }) {
        configuration.tls = ClientTLS(trustBundleFile: ca, certificateFile: certificate, keyFile: key)
    } else if certificate != nil || key != nil {
        return fail("tls_cert_file and tls_key_file need tls_ca_file, the CA that signs the collector's certificate", error, errorSize)
    }
    do {
        let started = try MeshExporter(configuration: configuration)
        return OpaquePointer(Unmanaged.passRetained(started).toOpaque())
    } catch let failure {
        return fail("\(failure)", error, errorSize)
    }
}

@_cdecl("meshexporter_record")
public func meshexporter_record(_ handle: OpaquePointer?, _ span: UnsafePointer<meshexporter_span>?, _ exported: Int32) -> Int32 {
    guard let handle, let span else { return 0 }
    let fields = withUnsafeBytes(of: span.pointee.trace_id) { trace in
        withUnsafeBytes(of: span.pointee.span_id) { id in
            withUnsafeBytes(of: span.pointee.parent_span_id) { parent in
                RawSpanFields(
                    traceID: TraceID(high: trace.loadUnaligned(as: UInt64.self).bigEndian,
                                     low: trace.loadUnaligned(fromByteOffset: 8, as: UInt64.self).bigEndian),
                    spanID: SpanID(id.loadUnaligned(as: UInt64.self).bigEndian),
                    parentSpanID: SpanID(parent.loadUnaligned(as: UInt64.self).bigEndian),
                    kind: SpanKind(rawValue: UInt8(clamping: span.pointee.kind)) ?? .unspecified,
                    startTime: span.pointee.start_time_ns, endTime: span.pointee.end_time_ns,
                    httpStatus: span.pointee.http_status, failed: span.pointee.failed != 0,
                    requestBytes: span.pointee.request_bytes, responseBytes: span.pointee.response_bytes,
                    mutualTLS: span.pointee.mutual_tls < 0 ? nil : span.pointee.mutual_tls != 0)
            }
        }
    }
    let value = span.pointee
    let recorded = exporter(handle).record(fields, exported: exported != 0) { field in
        switch field {
        case .name: value.name
        case .method: value.method
        case .path: value.path
        case .peerService: value.peer_service
        case .upstreamCluster: value.upstream_cluster
        case .peerAddress: value.peer_address
        case .responseFlags: value.response_flags
        case .requestID: value.request_id
        case .userAgent: value.user_agent
        case .traceState: value.trace_state
        }
    }
    return recorded ? 1 : 0
}

@_cdecl("meshexporter_label")
public func meshexporter_label(_ handle: OpaquePointer?, _ text: UnsafePointer<CChar>?) -> UnsafePointer<CChar>? {
    guard let handle, let text else { return nil }
    return exporter(handle).labelText(String(cString: text))
}

@_cdecl("meshexporter_sample")
public func meshexporter_sample(
    _ handle: OpaquePointer?, _ traceID: UnsafePointer<UInt8>?, _ traceparent: UnsafePointer<CChar>?,
    _ tracestate: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<CChar>?, _ outSize: Int
) -> Int32 {
    guard let handle, let traceID else { return 0 }
    let id = TraceID(bytes: UnsafeBufferPointer(start: traceID, count: 16)) ?? .zero
    let parent = traceparent.flatMap {
        TraceContext(traceparent: String(cString: $0), tracestate: tracestate.map { String(cString: $0) })
    }
    let (sampled, state) = exporter(handle).decide(traceID: id, parent: parent)
    if let out, outSize > 0 {
        let bytes = Array(state.utf8.prefix(outSize - 1))
        for (index, byte) in bytes.enumerated() { out[index] = CChar(bitPattern: byte) }
        out[bytes.count] = 0
    }
    return sampled ? 1 : 0
}

@_cdecl("meshexporter_flush")
public func meshexporter_flush(_ handle: OpaquePointer?) {
    guard let handle else { return }
    let target = exporter(handle)
    block { await target.flush() }
}

@_cdecl("meshexporter_get_stats")
public func meshexporter_get_stats(_ handle: OpaquePointer?, _ stats: UnsafeMutablePointer<meshexporter_stats>?) {
    guard let handle, let stats else { return }
    let counted = exporter(handle).statistics
    stats.pointee = meshexporter_stats(
        recorded: counted.recorded, sampled_out: counted.sampledOut, exported: counted.exported,
        dropped_buffer_full: counted.droppedBufferFull, dropped_export_failed: counted.droppedExportFailed,
        rejected_by_collector: counted.rejectedByCollector, truncated: counted.truncated,
        requests: counted.requests, retries: counted.retries)
}

@_cdecl("meshexporter_stop")
public func meshexporter_stop(_ handle: OpaquePointer?) {
    guard let handle else { return }
    let unmanaged = Unmanaged<MeshExporter>.fromOpaque(UnsafeRawPointer(handle))
    let target = unmanaged.takeUnretainedValue()
    block { await target.shutdown() }
    unmanaged.release()
}
