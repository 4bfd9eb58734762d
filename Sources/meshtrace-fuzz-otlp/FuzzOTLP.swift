import Foundation
import MeshCore
import OTLPWire
import SwiftProtobuf

/// Differential fuzzing of the direct OTLP decoder: every input must be refused by
/// both it and swift-protobuf, or accepted by both with the same spans. Any
/// disagreement traps, so libFuzzer keeps the input.
///
/// Built with `-sanitize=fuzzer,address -D FUZZING` (see `Fuzz/run.sh`), libFuzzer
/// drives it (through `LLVMFuzzerRunDriver`, as SwiftPM supplies `main`); built
/// plainly, it replays the files named on its command line.
func checkDecoders(_ bytes: [UInt8]) {
    let reference: (SpanBatch, IngestOutcome)? = (try? ExportTraceServiceRequest(serializedBytes: bytes)).map { request in
        var spans = SpanBatch()
        let outcome = spans.append(request)
        return (spans, outcome)
    }
    let direct = try? DecodedTraceExport(protobuf: bytes)
    guard let direct, let (spans, outcome) = reference else {
        if (direct == nil) != (reference == nil) {
            fatalError("decoders disagree on accepting \(bytes.count) bytes: direct \(direct != nil), swift-protobuf \(reference != nil)")
        }
        return
    }
    guard direct.outcome == outcome, direct.spans.count == spans.count,
          direct.spans.traceIDs == spans.traceIDs, direct.spans.spanIDs == spans.spanIDs,
          direct.spans.parentSpanIDs == spans.parentSpanIDs, direct.spans.names == spans.names,
          direct.spans.kinds == spans.kinds, direct.spans.startTimes == spans.startTimes,
          direct.spans.endTimes == spans.endTimes, direct.spans.statusCodes == spans.statusCodes,
          direct.spans.statusMessages == spans.statusMessages, direct.spans.httpStatusCodes == spans.httpStatusCodes
    else { fatalError("decoders disagree on the columns of \(bytes.count) bytes") }
    for row in 0..<spans.count {
        let same = (try? direct.spans.span(at: row).serializedBytes() as [UInt8]) == (try? spans.span(at: row).serializedBytes() as [UInt8])
            && direct.spans.serviceName(at: row) == spans.serviceName(at: row)
        if !same { fatalError("decoders disagree on span \(row) of \(bytes.count) bytes") }
    }
}

#if FUZZING
/// What libFuzzer calls with each input (its own `main`, when linked, calls this too).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    checkDecoders(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

/// libFuzzer's entry point for programs that have their own `main`.
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ testOneInput: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt
#endif

@main
struct FuzzOTLP {
    static func main() throws {
        #if FUZZING
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(runFuzzerDriver(&argc, &argv, fuzzOneInput))
        #else
        let paths = CommandLine.arguments.dropFirst()
        guard !paths.isEmpty else {
            print("usage: meshtrace-fuzz-otlp FILE...   (replays inputs; Fuzz/run.sh builds the libFuzzer target)")
            return
        }
        for path in paths {
            checkDecoders([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))))
            print("\(path): both decoders agree")
        }
        #endif
    }
}
