import MeshCore

extension String {
    /// The UTF-8 text of `bytes[range]` (already validated by the decoder; repaired if not).
    init(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) {
        self = String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }
}

/// The workload a resource describes: `service.name`, its namespace
/// (`k8s.namespace.name`, else `service.namespace`) and `service.version`.
enum ResourceFacts {
    static func workload(of resource: ResourceEntry) -> Workload {
        var workload = Workload(service: resource.serviceName)
        var serviceNamespace = ""
        resource.encoded.withUnsafeBufferPointer { bytes in
            // ResourceSpans.resource (1) → Resource.attributes (1) → KeyValue.
            var resourceSpans = WireReader(bytes, 0..<bytes.count)
            while let (field, wireType) = resourceSpans.tag() {
                guard field == 1, wireType == 2 else {
                    guard resourceSpans.skip(wireType: wireType) else { return }
                    continue
                }
                guard let resourceRange = resourceSpans.lengthDelimited() else { return }
                var resourceReader = WireReader(bytes, resourceRange)
                while let (resourceField, resourceWire) = resourceReader.tag() {
                    guard resourceField == 1, resourceWire == 2 else {
                        guard resourceReader.skip(wireType: resourceWire) else { return }
                        continue
                    }
                    guard let pair = resourceReader.lengthDelimited() else { return }
                    guard let (key, value) = RequestFacts.keyValue(bytes, pair) else { return }
                    guard let key, let text = AnyValueView(bytes, value ?? 0..<0).string else { continue }
                    if RequestFacts.equal(bytes, key, "service.version") {
                        workload.version = String(bytes, text)
                    } else if RequestFacts.equal(bytes, key, "k8s.namespace.name") {
                        workload.namespace = String(bytes, text)
                    } else if RequestFacts.equal(bytes, key, "service.namespace") {
                        serviceNamespace = String(bytes, text)
                    }
                }
            }
        }
        if workload.namespace.isEmpty { workload.namespace = serviceNamespace }
        return workload
    }
}
