/// Short names for the generated OTLP messages that the rest of meshtrace uses.
public typealias ExportTraceServiceRequest = Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceRequest
public typealias ExportTraceServiceResponse = Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceResponse
public typealias ExportTracePartialSuccess = Opentelemetry_Proto_Collector_Trace_V1_ExportTracePartialSuccess
public typealias ExportMetricsServiceRequest = Opentelemetry_Proto_Collector_Metrics_V1_ExportMetricsServiceRequest
public typealias ExportMetricsServiceResponse = Opentelemetry_Proto_Collector_Metrics_V1_ExportMetricsServiceResponse
public typealias TracesData = Opentelemetry_Proto_Trace_V1_TracesData
public typealias ResourceSpans = Opentelemetry_Proto_Trace_V1_ResourceSpans
public typealias ScopeSpans = Opentelemetry_Proto_Trace_V1_ScopeSpans
public typealias OTLPSpan = Opentelemetry_Proto_Trace_V1_Span
public typealias OTLPStatus = Opentelemetry_Proto_Trace_V1_Status
public typealias OTLPResource = Opentelemetry_Proto_Resource_V1_Resource
public typealias InstrumentationScope = Opentelemetry_Proto_Common_V1_InstrumentationScope
public typealias KeyValue = Opentelemetry_Proto_Common_V1_KeyValue
public typealias KeyValueList = Opentelemetry_Proto_Common_V1_KeyValueList
public typealias AnyValue = Opentelemetry_Proto_Common_V1_AnyValue
public typealias ArrayValue = Opentelemetry_Proto_Common_V1_ArrayValue
public typealias RPCStatus = Google_Rpc_Status
public typealias RetryInfo = Google_Rpc_RetryInfo

extension KeyValue {
    /// An attribute with a string value.
    public init(_ key: String, _ value: String) {
        self.init()
        self.key = key
        self.value.stringValue = value
    }

    /// An attribute with an integer value.
    public init(_ key: String, _ value: Int64) {
        self.init()
        self.key = key
        self.value.intValue = value
    }

    /// An attribute with a floating-point value.
    public init(_ key: String, _ value: Double) {
        self.init()
        self.key = key
        self.value.doubleValue = value
    }

    /// An attribute with a boolean value.
    public init(_ key: String, _ value: Bool) {
        self.init()
        self.key = key
        self.value.boolValue = value
    }
}

extension Array where Element == KeyValue {
    /// The string value of the first attribute named `key`, if it holds a string.
    public func string(_ key: String) -> String? {
        for attribute in self where attribute.key == key {
            if case .stringValue(let value)? = attribute.value.value { return value }
            return nil
        }
        return nil
    }

    /// The integer value of the first attribute named `key`, if it holds an integer.
    public func int(_ key: String) -> Int64? {
        for attribute in self where attribute.key == key {
            if case .intValue(let value)? = attribute.value.value { return value }
            return nil
        }
        return nil
    }
}

extension ExportMetricsServiceRequest {
    /// Data points across every metric of the request (each histogram or summary point counts once).
    public var dataPointCount: Int {
        var count = 0
        for resourceMetrics in resourceMetrics {
            for scopeMetrics in resourceMetrics.scopeMetrics {
                for metric in scopeMetrics.metrics {
                    switch metric.data {
                    case .gauge(let gauge): count += gauge.dataPoints.count
                    case .sum(let sum): count += sum.dataPoints.count
                    case .histogram(let histogram): count += histogram.dataPoints.count
                    case .exponentialHistogram(let histogram): count += histogram.dataPoints.count
                    case .summary(let summary): count += summary.dataPoints.count
                    case nil: break
                    }
                }
            }
        }
        return count
    }
}
