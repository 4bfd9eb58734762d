import Foundation
import MeshCore
import MeshSim
import OTLPWire
import QueryEngine
import Sampling
import SegmentStore
import XCTest

final class SamplingTests: XCTestCase {
    /// `byteHash` keys the lookup tables of golden signals and of segment encoding: a
    /// change to any one byte of a key, at any length, must change its hash.
    func testEveryByteOfAKeyCountsInItsHash() {
        for length in 1...40 {
            let key = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            let base = key.withUnsafeBytes { byteHash($0) }
            for position in 0..<length {
                var changed = key
                changed[position] ^= 0x20
                XCTAssertNotEqual(changed.withUnsafeBytes { byteHash($0) }, base, "length \(length), byte \(position)")
            }
            XCTAssertNotEqual(Array(key.dropLast()).withUnsafeBytes { byteHash($0) }, base, "length \(length) against one shorter")
        }
    }

    /// The sampler's trace table (and the golden signals' pairing room, the same map
    /// with other keys) answers as a dictionary does through inserts, updates in
    /// place and removals (at up to three quarters full, where runs of occupied
    /// slots are long enough for removal to shift entries back), for ids of every
    /// shape producers send (random, sharing a low half, 64-bit, all zero), across
    /// growth and shrinking, through keyed calls and through positions found once.
    /// The values hold references (arrays): each must come back intact however often
    /// removals have moved it.
    func testTraceIDMapAnswersAsADictionaryThroughChurn() {
        var random = SeededGenerator(seed: 11)
        var map = TraceIDMap<[Int]>()
        var expected: [TraceID: [Int]] = [:]
        // A small pool, so that ids are removed and come back.
        let pool: [TraceID] = (0..<3_000).map { index in
            switch index % 4 {
            case 0: return TraceID(high: random.next(), low: random.next())
            case 1: return TraceID(high: random.next(), low: 42)
            case 2: return TraceID(high: 0, low: UInt64(index))
            default: return index == 3 ? .zero : TraceID(high: UInt64(index), low: UInt64(index) << 32)
            }
        }
        for step in 0..<200_000 {
            let traceID = pool[Int(random.next() % UInt64(pool.count))]
            switch random.next() % 12 {
            case 0..<3:
                map[traceID] = [step]
                expected[traceID] = [step]
            case 3..<5:
                map.modify(traceID, default: [-1]) { $0.append(step) }
                expected[traceID, default: [-1]].append(step)
            case 5..<7:
                map[traceID] = nil
                expected[traceID] = nil
            case 7..<9:
                XCTAssertEqual(map.removeValue(forKey: traceID), expected.removeValue(forKey: traceID))
            case 9..<11:
                // Read, then replace, remove or insert at the one position found.
                let position = map.position(of: traceID)
                XCTAssertEqual(position.found, expected[traceID] != nil)
                if position.found {
                    XCTAssertEqual(map.value(at: position), expected[traceID])
                    if step % 2 == 0 {
                        map.setValue([step, 1], at: position)
                        expected[traceID] = [step, 1]
                    } else {
                        map.remove(at: position)
                        expected[traceID] = nil
                    }
                } else {
                    map.insert([step, 2], for: traceID, at: position)
                    expected[traceID] = [step, 2]
                }
            default:
                XCTAssertEqual(map[traceID], expected[traceID])
            }
            if step % 50_000 == 49_999 {
                // Empty most of it, then shrink: every id must still be found.
                for traceID in pool.prefix(2_900) {
                    map[traceID] = nil
                    expected[traceID] = nil
                }
                map.shrink(toHold: 0)
            }
            XCTAssertEqual(map.count, expected.count)
        }
        for traceID in pool { XCTAssertEqual(map[traceID], expected[traceID], "\(traceID)") }
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: map.entries.map { ($0.0, $0.1) }), expected)
        var visited: [TraceID: [Int]] = [:]
        map.forEach { visited[$0] = $1 }
        XCTAssertEqual(visited, expected)
    }

    // MARK: Consistent probability

    func testThresholdsMatchOpenTelemetrysArithmetic() throws {
        // The specification's examples (tracestate-probability-sampling.md).
        let cases: [(Double, String)] = [(1, "0"), (0.5, "8"), (0.25, "c"), (0.125, "e"), (0.0625, "f"),
                                         (0.1, "e666"), (0.01, "fd70a"), (0.001, "ffbe77")]
        for (probability, hex) in cases {
            XCTAssertEqual(Threshold(probability: probability).hex, hex, "p = \(probability)")
            XCTAssertEqual(Threshold(hex: hex), Threshold(probability: probability))
        }
        XCTAssertEqual(Threshold(probability: 0.1).adjustedCount, 9.9994, accuracy: 0.0001)
        XCTAssertEqual(Threshold(probability: 0).hex, "never")
        XCTAssertNil(Threshold(hex: "fffffffffffffff"), "15 digits")
        XCTAssertNil(Threshold(hex: "xyz"))

        let half = Threshold(probability: 0.5)
        XCTAssertTrue(half.keeps(0x80_0000_0000_0000))
        XCTAssertFalse(half.keeps(0x7F_FFFF_FFFF_FFFF))
        XCTAssertEqual(TraceID(high: 0xFFFF_FFFF_FFFF_FFFF, low: 0xAB12_3456_789A_BCDE).randomness, 0x12_3456_789A_BCDE)

        // A new threshold replaces th, keeps rv and the other members.
        var state = OTelTraceState(traceState: "vendor=x, ot=th:0;rv:9b8233f7e3a151;zz:1")
        XCTAssertEqual(state.randomness, 0x9b_8233_f7e3_a151)
        XCTAssertEqual(state.threshold, .always)
        state.threshold = Threshold(probability: 0.5)
        XCTAssertEqual(state.applied(to: "vendor=x, ot=th:0;rv:9b8233f7e3a151;zz:1"), "ot=th:8;rv:9b8233f7e3a151;zz:1,vendor=x")
        XCTAssertEqual(OTelTraceState(threshold: .always).applied(to: ""), "ot=th:0")
    }

    // MARK: Policy files

    func testPolicyFileErrorsNameFileLineAndReason() {
        func error(_ yaml: String) -> String {
            do {
                _ = try PolicyFile.parse(yaml: yaml, file: "p.yaml")
                return "accepted"
            } catch {
                return error.description
            }
        }
        let cases: [(String, String)] = [
            ("policies: [\n  {name: a, type: always_sample\n", "p.yaml: not valid YAML: line 3"),
            ("policies:\n  - name: a\n    type: sometimes\n", "p.yaml:3:11: policies[0].type: unknown policy type \"sometimes\""),
            ("policies:\n  - name: p\n    type: probabilistic\n    probabilistic: {sampling_percentage: ten}\n",
             "p.yaml:4:42: policies[0] (p).probabilistic.sampling_percentage: expected a number, got \"ten\""),
            ("policies:\n  - name: p\n    type: probabilistic\n    probabilistic: {sampling_percentage: 150}\n",
             "sampling_percentage: must be between 0 and 100, got 150"),
            ("policies:\n  - name: l\n    type: latency\n    latency: {threshold_ms: 500, upper_threshold_ms: 100}\n",
             "p.yaml:4:54: policies[0] (l).latency.upper_threshold_ms: must be more than threshold_ms (500), got 100"),
            ("policies:\n  - name: s\n    type: span_count\n    span_count: {min_spans: 5, max_spans: 2}\n", "max_spans: must not be less than min_spans"),
            ("policies:\n  - name: s\n    type: slow_for_edge\n    slow_for_edge: {quantile: 1.5}\n", "quantile: must be between 0 and 1"),
            ("policies:\n  - name: s\n    type: status_code\n    status_code: {status_codes: [EROR]}\n", "expected OK, ERROR or UNSET, got \"EROR\""),
            ("policies:\n  - name: s\n    type: status_code\n    status_code: {status_codes: [ERROR], colour: red}\n",
             "p.yaml:4:42: policies[0] (s).status_code.colour: unknown setting; expected status_codes"),
            ("decision_wait: soon\npolicies: [{name: a, type: always_sample}]\n", "p.yaml:1:16: decision_wait: expected a duration"),
            ("max_buffer_bytes: 12\npolicies: [{name: a, type: always_sample}]\n", "max_buffer_bytes: must be at least 1MiB"),
            ("policies: [{name: a, type: always_sample}, {name: a, type: always_sample}]\n", "the name \"a\" is used twice"),
            ("policies: []\n", "needs at least one policy"),
            ("policies:\n  - name: r\n    type: rate_limiting\n    rate_limiting: {spans_per_second: -3}\n", "must be more than 0"),
            ("policies:\n  - name: c\n    type: composite\n    composite:\n      max_total_spans_per_second: 100\n      policy_order: [x]\n"
                + "      composite_sub_policy: [{name: y, type: always_sample}]\n", "policy_order: no sub-policy is named \"x\""),
        ]
        for (yaml, expected) in cases {
            let message = error(yaml)
            XCTAssertTrue(message.contains(expected), "\(yaml)\n→ \(message)\nexpected to contain: \(expected)")
        }
    }

    func testAnOpenTelemetryCollectorConfigIsAccepted() throws {
        let yaml = """
            processors:
              tail_sampling:
                decision_wait: 30s
                num_traces: 50000
                expected_new_traces_per_sec: 10
                decision_cache: {sampled_cache_size: 100000, non_sampled_cache_size: 50000}
                policies:
                  - {name: test-policy-1, type: always_sample}
                  - {name: test-policy-2, type: latency, latency: {threshold_ms: 5000}}
                  - {name: test-policy-3, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}}
                  - {name: test-policy-4, type: probabilistic, probabilistic: {hash_salt: "custom-salt", sampling_percentage: 20}}
                  - {name: test-policy-5, type: status_code, status_code: {status_codes: [ERROR, UNSET]}}
                  - {name: test-policy-6, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}}
                  - {name: test-policy-7, type: string_attribute, string_attribute: {key: key2, values: [value1, val*], enabled_regex_matching: true, cache_max_size: 10}}
                  - {name: test-policy-8, type: rate_limiting, rate_limiting: {spans_per_second: 35}}
                  - {name: test-policy-9, type: string_attribute, string_attribute: {key: http.url, values: [\\/health, \\/metrics], enabled_regex_matching: true, invert_match: true}}
                  - {name: test-policy-10, type: span_count, span_count: {min_spans: 2, max_spans: 20}}
                  - {name: test-policy-11, type: trace_state, trace_state: {key: key3, values: [value1, value2]}}
                  - {name: test-policy-12, type: boolean_attribute, boolean_attribute: {key: key4, value: true}}
                  - name: and-policy-1
                    type: and
                    and:
                      and_sub_policy:
                        - {name: test-and-policy-1, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}}
                        - {name: test-and-policy-2, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}}
                  - name: composite-policy-1
                    type: composite
                    composite:
                      max_total_spans_per_second: 1000
                      policy_order: [test-composite-policy-1, test-composite-policy-2, test-composite-policy-3]
                      composite_sub_policy:
                        - {name: test-composite-policy-1, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}}
                        - {name: test-composite-policy-2, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}}
                        - {name: test-composite-policy-3, type: always_sample}
                      rate_allocation:
                        - {policy: test-composite-policy-1, percent: 50}
                        - {policy: test-composite-policy-2, percent: 25}
                  - name: drop-policy-1
                    type: drop
                    drop:
                      drop_sub_policy:
                        - {name: test-drop-policy-1, type: string_attribute, string_attribute: {key: url.path, values: [\\/health]}}
            """
        let file = try PolicyFile.parse(yaml: yaml, file: "otel.yaml")
        XCTAssertEqual(file.policies.count, 15)
        XCTAssertEqual(file.decisionWait, .seconds(30))
        XCTAssertEqual(file.maxTraces, 50_000)
        XCTAssertEqual(file.decisionCacheSize, 150_000)
        XCTAssertEqual(file.ignored.count, 1, "expected_new_traces_per_sec is accepted and reported as without effect")
        guard case let .composite(_, children) = file.policies[13].rule else { return XCTFail("composite") }
        XCTAssertEqual(children.map(\.share), [0.5, 0.25, 0.25], "the unallocated sub-policy gets what is left")
    }

    // MARK: Decisions

    /// A span of a hand-made trace.
    struct TestSpan {
        var service: String
        var id: UInt8
        var parent: UInt8 = 0
        var kind: OTLPSpan.SpanKind = .server
        var duration: UInt64 = 1_000_000
        var error = false
        var attributes: [KeyValue] = []
        var traceState = ""
    }

    func batch(_ spans: [TestSpan], trace: TraceID = TraceID(high: 1, low: 0xFF_FFFF_FFFF_FFFF)) -> SpanBatch {
        var request = ExportTraceServiceRequest()
        for span in spans {
            var otlp = OTLPSpan()
            otlp.traceID = Data(trace.bytes)
            otlp.spanID = Data([0, 0, 0, 0, 0, 0, 0, span.id])
            if span.parent != 0 { otlp.parentSpanID = Data([0, 0, 0, 0, 0, 0, 0, span.parent]) }
            otlp.name = "op"
            otlp.kind = span.kind
            otlp.startTimeUnixNano = 1_700_000_000_000_000_000
            otlp.endTimeUnixNano = otlp.startTimeUnixNano + span.duration
            otlp.attributes = span.attributes
            otlp.traceState = span.traceState
            if span.error { otlp.status.code = .error }
            var scope = ScopeSpans()
            scope.spans = [otlp]
            var resource = ResourceSpans()
            resource.resource.attributes = [KeyValue("service.name", span.service)]
            resource.scopeSpans = [scope]
            request.resourceSpans.append(resource)
        }
        var batch = SpanBatch()
        _ = batch.append(request)
        return batch
    }

    /// Runs one trace through a sampler with `policies` (YAML list items) and says what it kept.
    func kept(_ policies: String, _ spans: [TestSpan], trace: TraceID = TraceID(high: 1, low: 0xFF_FFFF_FFFF_FFFF),
              edges: EdgeKnowledge = EdgeKnowledge(), withFacts: Bool = true,
              file: StaticString = #filePath, line: UInt = #line) throws -> SpanBatch {
        let policy = try PolicyFile.parse(yaml: "decision_wait: 1s\npolicies:\n" + policies, file: "test.yaml")
        let sampler = TailSampler(policy: policy)
        sampler.update(edges: edges)
        var kept = SpanBatch()
        // As the collector admits a request: with the facts its decoder read (or, as a
        // policy replay does, without).
        let admitted = batch(spans, trace: trace)
        if withFacts {
            sampler.admit(admitted, facts: admitted.requestFacts(), now: 1, into: &kept)
        } else {
            sampler.admit(admitted, now: 1, into: &kept)
        }
        sampler.release(now: 2_000_000_000, into: &kept)
        let statistics = sampler.statistics
        XCTAssertEqual(statistics.spansKept + statistics.spansDropped, UInt64(spans.count), file: file, line: line)
        return kept
    }

    func testEachPolicyTypeKeepsWhatItShould() throws {
        let plain = [TestSpan(service: "a", id: 1), TestSpan(service: "a", id: 2, parent: 1, kind: .client),
                     TestSpan(service: "b", id: 3, parent: 2)]
        var failing = plain
        failing[2].error = true
        var tagged = plain
        tagged[2].attributes = [KeyValue("http.response.status_code", Int64(503)), KeyValue("tenant", "gold"), KeyValue("canary", true),
                                KeyValue("connection_security_policy", "none")]
        tagged[0].traceState = "vendor=on"
        var slow = plain
        slow[0].duration = 900_000_000
        // `plaintext` as the decoder reads it: `tls.established: false`, unless another
        // attribute says mutual TLS.
        var unencrypted = plain
        unencrypted[1].attributes = [KeyValue("tenant", "gold"), KeyValue("tls.established", false)]
        var encrypted = plain
        encrypted[1].attributes = [KeyValue("tls.established", true), KeyValue("connection_security_policy", "mutual_tls")]

        // Every way a call is found: the entry (user → a), a CLIENT span answered by a
        // SERVER span (a → b), a CLIENT span no one answered, named by what it calls
        // (a → db), and a SERVER span whose caller is not in the trace (unknown → c).
        let branching = [TestSpan(service: "a", id: 1), TestSpan(service: "a", id: 2, parent: 1, kind: .client),
                         TestSpan(service: "b", id: 3, parent: 2),
                         TestSpan(service: "a", id: 4, parent: 1, kind: .client, attributes: [KeyValue("peer.service", "db")]),
                         TestSpan(service: "c", id: 5, parent: 99), TestSpan(service: "c", id: 6, parent: 5, kind: .internal)]

        // (policy, trace, kept?)
        let cases: [(String, [TestSpan], Bool)] = [
            ("  - {name: x, type: edge, edge: {caller: user, callee: a}}", branching, true),
            ("  - {name: x, type: edge, edge: {caller: a, callee: b}}", branching, true),
            ("  - {name: x, type: edge, edge: {caller: a, callee: db}}", branching, true),
            ("  - {name: x, type: edge, edge: {caller: unknown, callee: c}}", branching, true),
            ("  - {name: x, type: edge, edge: {caller: a, callee: c}}", branching, false),
            ("  - {name: x, type: edge, edge: {caller: c}}", branching, false),
            ("  - {name: x, type: edge, edge: {callee: a}}", branching, true),
            ("  - {name: x, type: always_sample}", plain, true),
            ("  - {name: x, type: probabilistic, probabilistic: {sampling_percentage: 0}}", plain, false),
            ("  - {name: x, type: status_code, status_code: {status_codes: [ERROR]}}", plain, false),
            ("  - {name: x, type: status_code, status_code: {status_codes: [ERROR]}}", failing, true),
            ("  - {name: x, type: status_code, status_code: {status_codes: [OK, ERROR]}}", failing, true),
            ("  - {name: x, type: status_code, status_code: {status_codes: [OK]}}", failing, false),
            ("  - {name: x, type: latency, latency: {threshold_ms: 500}}", slow, true),
            ("  - {name: x, type: latency, latency: {threshold_ms: 500}}", plain, false),
            ("  - {name: x, type: latency, latency: {threshold_ms: 100, upper_threshold_ms: 800}}", slow, false),
            ("  - {name: x, type: numeric_attribute, numeric_attribute: {key: http.response.status_code, min_value: 500}}", tagged, true),
            ("  - {name: x, type: numeric_attribute, numeric_attribute: {key: http.response.status_code, min_value: 500}}", plain, false),
            ("  - {name: x, type: numeric_attribute, numeric_attribute: {key: http.response.status_code, min_value: 500, invert_match: true}}", tagged, false),
            ("  - {name: x, type: numeric_attribute, numeric_attribute: {key: http.response.status_code, min_value: 500, invert_match: true}}", plain, true),
            ("  - {name: x, type: string_attribute, string_attribute: {key: tenant, values: [gold, silver]}}", tagged, true),
            ("  - {name: x, type: string_attribute, string_attribute: {key: tenant, values: [silver]}}", tagged, false),
            ("  - {name: x, type: string_attribute, string_attribute: {key: tenant, values: [\"go.*\"], enabled_regex_matching: true}}", tagged, true),
            ("  - {name: x, type: string_attribute, string_attribute: {key: service.name, values: [b]}}", plain, true),
            ("  - {name: x, type: boolean_attribute, boolean_attribute: {key: canary, value: true}}", tagged, true),
            ("  - {name: x, type: boolean_attribute, boolean_attribute: {key: canary, value: false}}", tagged, false),
            ("  - {name: x, type: span_count, span_count: {min_spans: 3}}", plain, true),
            ("  - {name: x, type: span_count, span_count: {min_spans: 4}}", plain, false),
            ("  - {name: x, type: trace_state, trace_state: {key: vendor, values: [on]}}", tagged, true),
            ("  - {name: x, type: trace_state, trace_state: {key: vendor, values: [off]}}", tagged, false),
            ("  - {name: x, type: edge, edge: {caller: a, callee: b}}", plain, true),
            ("  - {name: x, type: edge, edge: {caller: b}}", plain, false),
            ("  - {name: x, type: edge, edge: {caller: user, callee: a}}", plain, true),
            ("  - {name: x, type: plaintext}", tagged, true),
            ("  - {name: x, type: plaintext}", plain, false),
            ("  - {name: x, type: plaintext}", unencrypted, true),
            ("  - {name: x, type: plaintext}", encrypted, false),
            ("  - {name: x, type: new_edge, new_edge: {traces_per_edge: 1}}", plain, true),
            ("  - {name: x, type: and, and: {and_sub_policy: [{name: y, type: status_code, status_code: {status_codes: [ERROR]}}, {name: z, type: edge, edge: {callee: b}}]}}", failing, true),
            ("  - {name: x, type: and, and: {and_sub_policy: [{name: y, type: status_code, status_code: {status_codes: [ERROR]}}, {name: z, type: edge, edge: {callee: c}}]}}", failing, false),
            // Only trace-id sub-policies: decided as spans arrive, and still by the trace's randomness.
            ("  - {name: x, type: and, and: {and_sub_policy: [{name: y, type: probabilistic, probabilistic: {sampling_percentage: 50}}, {name: z, type: always_sample}]}}", plain, true),
            ("  - {name: x, type: always_sample}\n  - {name: d, type: drop, drop: {drop_sub_policy: [{name: y, type: edge, edge: {callee: b}}]}}", plain, false),
            ("  - {name: x, type: always_sample}\n  - {name: d, type: drop, drop: {drop_sub_policy: [{name: y, type: edge, edge: {callee: c}}]}}", plain, true),
            ("  - {name: x, type: rate_limiting, rate_limiting: {spans_per_second: 100}}", plain, true),
            ("  - {name: x, type: composite, composite: {max_total_spans_per_second: 100, composite_sub_policy: [{name: y, type: status_code, status_code: {status_codes: [ERROR]}}]}}", failing, true),
            ("  - {name: x, type: composite, composite: {max_total_spans_per_second: 100, composite_sub_policy: [{name: y, type: status_code, status_code: {status_codes: [ERROR]}}]}}", plain, false),
        ]
        for (policy, spans, expected) in cases {
            let result = try kept(policy, spans)
            XCTAssertEqual(result.count, expected ? spans.count : 0, policy)
        }
        // Admitted without facts, `plaintext` reads each span's attributes: the same answers.
        for (spans, expected) in [(tagged, true), (plain, false), (unencrypted, true), (encrypted, false)] {
            XCTAssertEqual(try kept("  - {name: x, type: plaintext}", spans, withFacts: false).count, expected ? spans.count : 0)
        }

        // slow_for_edge compares with the edge's live quantile.
        let edges = EdgeKnowledge(quantiles: [0.99: [EdgeName(caller: "user", callee: "a"): EdgeLatency(server: 500_000_000)]])
        XCTAssertEqual(try kept("  - {name: s, type: slow_for_edge}", slow, edges: edges).count, 3)
        XCTAssertEqual(try kept("  - {name: s, type: slow_for_edge}", plain, edges: edges).count, 0)
        XCTAssertEqual(try kept("  - {name: s, type: slow_for_edge}", slow).count, 0, "no quantile known yet: not slow")
        var slowHop = plain
        slowHop[2].duration = 700_000_000
        let hopEdges = EdgeKnowledge(quantiles: [0.9: [EdgeName(caller: "a", callee: "b"): EdgeLatency(server: 600_000_000)]])
        XCTAssertEqual(try kept("  - {name: s, type: slow_for_edge, slow_for_edge: {quantile: 0.9, scope: any}}", slowHop, edges: hopEdges).count, 3)
        XCTAssertEqual(try kept("  - {name: s, type: slow_for_edge, slow_for_edge: {quantile: 0.9, scope: root}}", slowHop, edges: hopEdges).count, 0)
    }

    /// A kept trace whose spans arrived in two batches, from twenty workloads: every
    /// span is kept once, with its own resource and its own attributes.
    func testAKeptTraceSpreadOverBatchesKeepsEachSpansResource() throws {
        let policy = try PolicyFile.parse(yaml: "decision_wait: 1s\npolicies:\n  - {name: x, type: span_count, span_count: {min_spans: 2}}",
                                          file: "test.yaml")
        let sampler = TailSampler(policy: policy)
        func spans(_ ids: ClosedRange<UInt8>) -> [TestSpan] {
            ids.map { id in
                TestSpan(service: "workload-\(id % 20)", id: id, parent: id == 1 ? 0 : 1, kind: id == 1 ? .server : .client,
                         attributes: [KeyValue("position", Int64(id))])
            }
        }
        var kept = SpanBatch()
        sampler.admit(batch(spans(1...30)), now: 1, into: &kept)
        sampler.admit(batch(spans(31...45)), now: 2, into: &kept)
        XCTAssertEqual(kept.count, 0, "held until the decision is due")
        sampler.release(now: 2_000_000_000, into: &kept)
        XCTAssertEqual(kept.count, 45)
        var seen: Set<UInt64> = []
        for row in 0..<kept.count {
            let id = kept.spanIDs[row].value
            XCTAssertTrue(seen.insert(id).inserted, "span \(id) kept twice")
            XCTAssertEqual(kept.resources[Int(kept.resourceIndices[row])].serviceName, "workload-\(id % 20)")
            XCTAssertTrue(AttributeValue.find(Array("position".utf8), in: kept.attributes[row]) { $0.int == Int64(id) })
        }
        XCTAssertEqual(Set(kept.resources.map(\.serviceName)).count, 20, "each workload's resource once")
    }

    /// Two kept traces that share a batch and its resources, decided into two different
    /// outputs: where the first put a resource says nothing about the second, whose
    /// table holds others first. Each span keeps its own workload and scope.
    func testTracesOfOneBatchKeptIntoDifferentOutputsKeepTheirResources() throws {
        let policy = try PolicyFile.parse(yaml: "decision_wait: 1s\npolicies:\n  - {name: x, type: span_count, span_count: {min_spans: 2}}",
                                          file: "test.yaml")
        let sampler = TailSampler(policy: policy, shards: 1)
        let first = TraceID(high: 1, low: 1)
        let second = TraceID(high: 2, low: 2)
        func spans(_ ids: ClosedRange<UInt8>) -> [TestSpan] {
            ids.map { TestSpan(service: "workload-\($0 % 10)", id: $0, parent: $0 == ids.lowerBound ? 0 : ids.lowerBound) }
        }
        var held = SpanBatch()
        sampler.admit(batch(spans(1...10), trace: first), now: 1, into: &held)
        // Later: the rest of the first trace and all of the second, over the same workloads.
        var shared = batch(spans(11...20), trace: first)
        shared.append(contentsOf: batch(spans(21...30), trace: second))
        sampler.admit(shared, now: 500_000_000, into: &held)
        XCTAssertEqual(held.count, 0)

        var firstOutput = SpanBatch()
        sampler.release(now: 1_000_000_002, into: &firstOutput)
        var secondOutput = SpanBatch()
        for name in ["other-a", "other-b", "other-c", "workload-7"].reversed() {
            _ = secondOutput.intern(resource: ResourceEntry(serviceName: name, encoded: Array(name.utf8)))
        }
        secondOutput.append(contentsOf: batch([TestSpan(service: "other-c", id: 99)], trace: TraceID(high: 3, low: 3)))
        let before = secondOutput.count
        sampler.release(now: 2_000_000_000, into: &secondOutput)

        let resources = Dictionary(uniqueKeysWithValues: shared.resources.map { ($0.serviceName, $0) })
        func check(_ output: SpanBatch, rows: Range<Int>, trace: TraceID, ids: ClosedRange<UInt64>) {
            XCTAssertEqual(Set(rows.map { output.spanIDs[$0].value }), Set(ids))
            for row in rows {
                XCTAssertEqual(output.traceIDs[row], trace)
                let id = output.spanIDs[row].value
                XCTAssertEqual(output.resources[Int(output.resourceIndices[row])], resources["workload-\(id % 10)"], "span \(id)")
                XCTAssertEqual(output.scopes[Int(output.scopeIndices[row])], shared.scopes[0], "span \(id)")
            }
        }
        check(firstOutput, rows: 0..<firstOutput.count, trace: first, ids: 1...20)
        check(secondOutput, rows: before..<secondOutput.count, trace: second, ids: 21...30)
        XCTAssertEqual(secondOutput.resources.map(\.serviceName).filter { $0.hasPrefix("workload-") }.count, 11,
                       "each workload's resource once more, beside the seeded one that only shares a name")
    }

    func testKeptSpansRecordTheirThresholdAndHonourUpstreamOnes() throws {
        // Kept by an error (probability 1): th:0. Upstream head sampling at 1/4 stays on record.
        // Each span's own other members stay its own, whatever its neighbours carry.
        var spans = [TestSpan(service: "a", id: 1, error: true, traceState: "ot=th:c;rv:ffffffffffffff,x=1"), TestSpan(service: "a", id: 2, parent: 1),
                     TestSpan(service: "a", id: 3, parent: 1, traceState: "v=2"), TestSpan(service: "a", id: 4, parent: 1)]
        var result = try kept("  - {name: e, type: status_code, status_code: {status_codes: [ERROR]}}", spans)
        XCTAssertEqual(result.count, 4)
        XCTAssertEqual(try OTLPSpanState(result, result.spanIDs.firstIndex(of: SpanID(2))!), "ot=th:c")
        XCTAssertEqual(try OTLPSpanState(result, result.spanIDs.firstIndex(of: SpanID(3))!), "ot=th:c,v=2")
        XCTAssertEqual(try OTLPSpanState(result, result.spanIDs.firstIndex(of: SpanID(4))!), "ot=th:c")
        spans.removeLast(2)
        for row in 0..<result.count {
            let state = try XCTUnwrap(OTLPSpanState(result, row))
            XCTAssertTrue(state.hasPrefix("ot=th:c"), state)
            XCTAssertEqual(AdjustedCount.of(extras: result.extras[row]), 4)
        }
        XCTAssertEqual(try OTLPSpanState(result, result.spanIDs.firstIndex(of: SpanID(1))!), "ot=th:c;rv:ffffffffffffff,x=1")
        spans[0].error = false
        // The explicit randomness (propagated to every span) decides, not the trace id:
        // rv ff… passes 1 %, rv 00… does not.
        spans[0].traceState = "ot=rv:ffffffffffffff"
        spans[1].traceState = "ot=rv:ffffffffffffff"
        result = try kept("  - {name: p, type: probabilistic, probabilistic: {sampling_percentage: 1}}", spans,
                          trace: TraceID(high: 0, low: 1))
        XCTAssertEqual(result.count, 2)
        XCTAssertEqual(AdjustedCount.of(extras: result.extras[0]), Threshold(probability: 0.01).adjustedCount)
        XCTAssertEqual(try OTLPSpanState(result, 0), "ot=th:fd70a;rv:ffffffffffffff")
        spans[0].traceState = "ot=rv:00000000000001"
        spans[1].traceState = "ot=rv:00000000000001"
        XCTAssertEqual(try kept("  - {name: p, type: probabilistic, probabilistic: {sampling_percentage: 1}}", spans,
                                trace: TraceID(high: 0, low: 0xFF_FFFF_FFFF_FFFF)).count, 0)
    }

    /// A `trace_state` whose tag is written in two bytes (protobuf allows it, and the
    /// decoder keeps a span's extras as they came) still gives the trace its randomness,
    /// whether the trace is held for its decision or decided by its id alone.
    func testATraceStateWithATwoByteTagIsRead() throws {
        let probabilistic = "  - {name: p, type: probabilistic, probabilistic: {sampling_percentage: 1}}"
        // A policy that reads the spans holds the trace and decides it whole.
        let held = "  - {name: e, type: status_code, status_code: {status_codes: [ERROR]}}\n" + probabilistic
        // The trace id's randomness (its 56 low bits, 1) is below any threshold; rv ff… passes 1 %.
        let traceID = [UInt8](repeating: 0, count: 15) + [1]
        func span(_ id: UInt8, parent: UInt8?, traceStateTag: [UInt8]) -> [UInt8] {
            let state = Array("ot=rv:ffffffffffffff".utf8)
            return field(1, traceID) + field(2, [0, 0, 0, 0, 0, 0, 0, id]) + (parent.map { field(4, [0, 0, 0, 0, 0, 0, 0, $0]) } ?? [])
                + traceStateTag + varint(UInt64(state.count)) + state
                + field(5, Array("op".utf8)) + varintField(6, 2)
                + fixed64Field(7, 1_700_000_000_000_000_000) + fixed64Field(8, 1_700_000_000_001_000_000)
        }
        for policies in [held, probabilistic] {
            for tag: [UInt8] in [[0x1A], [0x9A, 0x00]] {
                let resource = field(1, field(1, field(1, Array("service.name".utf8)) + field(2, field(1, Array("a".utf8)))))
                let scope = field(2, field(2, span(1, parent: nil, traceStateTag: tag)) + field(2, span(2, parent: 1, traceStateTag: tag)))
                let export = try DecodedTraceExport(protobuf: field(1, resource + scope))
                XCTAssertEqual(export.spans.count, 2)
                let sampler = TailSampler(policy: try PolicyFile.parse(yaml: "decision_wait: 1s\npolicies:\n" + policies, file: "t.yaml"))
                var kept = SpanBatch()
                sampler.admit(export.spans, facts: export.facts, now: 1, into: &kept)
                sampler.release(now: 5_000_000_000, into: &kept)
                XCTAssertEqual(kept.count, 2, "tag \(tag), policies \(policies)")
            }
        }
    }

    func OTLPSpanState(_ batch: SpanBatch, _ row: Int) throws -> String {
        try batch.span(at: row).traceState
    }

    func testLateSpansHugeTracesAndTheDecisionCache() throws {
        let policy = try PolicyFile.parse(yaml: """
            decision_wait: 1s
            root_wait: 0s
            max_spans_per_trace: 100
            policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]
            """, file: "t.yaml")
        let sampler = TailSampler(policy: policy)
        var kept = SpanBatch()
        // A failing trace whose root comes first is decided at once (root_wait 0) and kept;
        // a span arriving later follows that decision.
        sampler.admit(batch([TestSpan(service: "a", id: 1, error: true)], trace: TraceID(high: 7, low: 7)), now: 10, into: &kept)
        XCTAssertEqual(kept.count, 1)
        sampler.admit(batch([TestSpan(service: "b", id: 2, parent: 1)], trace: TraceID(high: 7, low: 7)), now: 20, into: &kept)
        XCTAssertEqual(kept.count, 2)
        XCTAssertEqual(sampler.statistics.lateSpansKept, 1)
        XCTAssertEqual(sampler.statistics.decidedAtRoot, 1)

        // A huge trace is decided when it reaches max_spans_per_trace; its later spans follow.
        let huge = TraceID(high: 9, low: 9)
        for chunk in 0..<3 {
            let spans = (0..<50).map { TestSpan(service: "a", id: UInt8(chunk * 50 + $0 + 1), parent: 255) }
            sampler.admit(batch(spans, trace: huge), now: 30, into: &kept)
        }
        var statistics = sampler.statistics
        XCTAssertEqual(statistics.forcedBySize, 1)
        XCTAssertEqual(statistics.lateSpansDropped, 50)
        XCTAssertEqual(statistics.tracesDropped, 1)
        XCTAssertEqual(statistics.openTraces, 0)

        // Other traces are decided at decision_wait.
        sampler.admit(batch([TestSpan(service: "a", id: 1, parent: 9, error: true)], trace: TraceID(high: 8, low: 8)), now: 40, into: &kept)
        XCTAssertEqual(kept.count, 2)
        sampler.release(now: 40 + 999_999_999, into: &kept)
        XCTAssertEqual(kept.count, 2, "not before decision_wait")
        sampler.release(now: 40 + 1_000_000_000, into: &kept)
        XCTAssertEqual(kept.count, 3)
        statistics = sampler.statistics
        XCTAssertEqual(statistics.decidedAtWait, 1)
        XCTAssertEqual(statistics.spansReceived, statistics.spansKept + statistics.spansDropped)
    }

    // MARK: What the issue asks to show

    /// The default policy on MeshSim traffic in which 1 % of requests fail: at most 5 %
    /// of spans stored, every error trace and every trace slower than its entry edge's
    /// p99 kept whole.
    func testDefaultPolicyKeepsEveryErrorAndSlowTraceWithinFivePercentOfSpans() throws {
        let traffic = MeshSim.arrivals(requests: 20_000, rate: 200, requestErrorRate: 0.01, seed: 11)
        let report = try PolicyReplay.run(policy: .builtIn(), traffic: traffic)
        XCTAssertEqual(report.traces, 20_000)
        XCTAssertEqual(Double(report.errorTraces) / Double(report.traces), 0.01, accuracy: 0.002, "1 % of requests fail")
        XCTAssertGreaterThan(report.slowTraces, 150)
        XCTAssertEqual(report.errorTracesKept, report.errorTraces, "every error trace, whole")
        XCTAssertEqual(report.slowTracesKept, report.slowTraces, "every slow trace, whole")
        XCTAssertEqual(report.partialTraces, 0)
        XCTAssertLessThanOrEqual(Double(report.keptSpans) / Double(report.spans), 0.05, "at most 5 % of spans stored")
        XCTAssertGreaterThan(report.keptSpans, 0)
    }

    /// Counts rebuilt from stored spans at 1 % sampling, weighted by each span's
    /// adjusted count, come within 5 % of the true counts.
    func testWeightedCountsFromStoredSpansAreUnbiased() throws {
        let policy = try PolicyFile.parse(yaml: """
            policies:
              - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
              - {name: baseline, type: probabilistic, probabilistic: {sampling_percentage: 1}}
            """, file: "t.yaml")
        let sampler = TailSampler(policy: policy)
        var generator = SeededGenerator(seed: 5)
        let services = ["frontend", "cart", "checkout"]
        var resources = SpanBatch()
        let resourceIndex = services.map { name in
            resources.intern(resource: ResourceEntry(serviceName: name, encoded: try! OTLPResource.with {
                $0.attributes = [KeyValue("service.name", name)]
            }.serializedBytes()))
        }
        let scope = resources.intern(scope: [])
        var truth: [String: (requests: Int, errors: Int)] = [:]
        var kept = SpanBatch()
        var now: UInt64 = 1
        for _ in 0..<60 {
            var batch = resources
            for _ in 0..<5_000 {
                let trace = TraceID(high: generator.next(), low: generator.next())
                let caller = generator.int(in: 0...1)
                let callee = caller + 1
                let failed = generator.chance(0.02)
                let key = "\(services[caller])→\(services[callee])"
                truth[key, default: (0, 0)].requests += 1
                if failed { truth[key, default: (0, 0)].errors += 1 }
                let clientID = SpanID(generator.next() | 1)
                for (kind, service, id, parent) in [(SpanKind.client, caller, clientID, SpanID(0x77)),
                                                    (.server, callee, SpanID(generator.next() | 1), clientID)] {
                    batch.append(SpanBatch.Row(
                        traceID: trace, spanID: id, parentSpanID: parent,
                        name: "call", kind: kind, startTime: 1_700_000_000_000_000_000, endTime: 1_700_000_000_001_000_000,
                        statusCode: failed ? .error : .unset, statusMessage: "", httpStatusCode: failed ? 500 : 200,
                        resourceIndex: resourceIndex[service], scopeIndex: scope, attributes: [], extras: []))
                }
            }
            sampler.admit(batch, now: now, into: &kept)
            now += 100_000_000
        }
        sampler.releaseAll(now: now, into: &kept)
        let directory = temporaryDirectory(self)
        try FileManager.default.createDirectory(atPath: directory + "/segments", withIntermediateDirectories: true)
        try SegmentWriter.write(kept.sortedByTrace(), walSequence: 1, to: directory + "/segments/seg-1.mts")
        var configuration = SpanStore.Configuration(dataDirectory: directory)
        configuration.readOnly = true
        let topology = try QueryEngine(snapshot: try SpanStore(configuration: configuration).snapshot()).topology(window: 0...UInt64.max)

        XCTAssertEqual(topology.edges.count, 2)
        for edge in topology.edges {
            let expected = try XCTUnwrap(truth["\(edge.source)→\(edge.target)"])
            XCTAssertLessThan(edge.storedRequests, expected.requests / 20, "sampled: \(edge.storedRequests) stored")
            XCTAssertEqual(Double(edge.requests), Double(expected.requests), accuracy: 0.05 * Double(expected.requests),
                           "\(edge.source)→\(edge.target): weighted \(edge.requests) vs \(expected.requests) true")
            XCTAssertEqual(edge.errors, expected.errors, "errors are all kept, each counting once")
        }
    }

    /// Two samplers fed the same traffic in different batches and at different times
    /// keep the same traces, with the same thresholds.
    func testDecisionsAreTheSameOnAnyCollector() throws {
        let traffic = MeshSim.arrivals(requests: 2_000, rate: 100, requestErrorRate: 0.05, seed: 3)
        let policy = try PolicyFile.parse(yaml: """
            policies:
              - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
              - {name: slow, type: latency, latency: {threshold_ms: 60}}
              - {name: baseline, type: probabilistic, probabilistic: {sampling_percentage: 5}}
            """, file: "t.yaml")
        func keptTraces(_ batches: [SpanBatch], wait: UInt64, shards: Int = 1) -> [TraceID: String] {
            let sampler = TailSampler(policy: policy, shards: shards)
            var kept = SpanBatch()
            var now = wait
            for batch in batches {
                sampler.admit(batch, now: now, into: &kept)
                now += wait
            }
            sampler.releaseAll(now: now, into: &kept)
            var result: [TraceID: String] = [:]
            for row in 0..<kept.count { result[kept.traceIDs[row]] = (try? kept.span(at: row).traceState) ?? "?" }
            return result
        }
        let first = keptTraces(traffic.map(\.batch), wait: 1_000)
        var merged = SpanBatch()
        for (batch, _) in traffic { merged.append(contentsOf: batch) }
        let second = keptTraces([merged], wait: 7)
        XCTAssertGreaterThan(first.count, 100)
        XCTAssertEqual(first, second)
        // However many shards split the traces.
        XCTAssertEqual(keptTraces(traffic.map(\.batch), wait: 1_000, shards: 3), first)
        XCTAssertEqual(keptTraces([merged], wait: 7, shards: 8), first)
    }

    /// What a policy remembers across traces is one for all shards: `new_edge` keeps
    /// the first trace over an edge once, not once per shard, and a rate limit holds
    /// for the whole sampler.
    func testPoliciesThatRememberShareItAcrossShards() throws {
        func traces(_ count: Int, firstID: UInt64) -> SpanBatch {
            var batch = SpanBatch()
            let a = batch.intern(resource: ResourceEntry(serviceName: "a", encoded: []))
            let b = batch.intern(resource: ResourceEntry(serviceName: "b", encoded: []))
            let scope = batch.intern(scope: [])
            for index in 0..<UInt64(count) {
                let trace = TraceID(high: firstID + index, low: (firstID + index) &* 0x9E37_79B9_7F4A_7C15)
                for (span, parent, kind, resource) in [(1, 0, SpanKind.server, a), (2, 1, .client, a), (3, 2, .server, b)] as [(UInt64, UInt64, SpanKind, UInt32)] {
                    batch.append(SpanBatch.Row(
                        traceID: trace, spanID: SpanID(span), parentSpanID: SpanID(parent), name: "op", kind: kind,
                        startTime: 1, endTime: 2, statusCode: .unset, statusMessage: "", httpStatusCode: 200,
                        resourceIndex: resource, scopeIndex: scope, attributes: [], extras: []))
                }
            }
            return batch
        }
        let newEdge = try PolicyFile.parse(yaml: "policies: [{name: n, type: new_edge, new_edge: {traces_per_edge: 2}}]", file: "t.yaml")
        let sampler = TailSampler(policy: newEdge, shards: 4)
        var kept = SpanBatch()
        sampler.admit(traces(64, firstID: 1), now: 0, into: &kept)
        sampler.releaseAll(now: 1, into: &kept)
        XCTAssertEqual(Set((0..<kept.count).map { kept.traceIDs[$0] }).count, 2, "two traces over user→a and a→b, in all shards together")

        // 3 spans a trace, at most 300 spans a second: about 100 traces of 3,000 in one second.
        let limited = try PolicyFile.parse(yaml: "policies: [{name: r, type: rate_limiting, rate_limiting: {spans_per_second: 300}}]", file: "t.yaml")
        let rated = TailSampler(policy: limited, shards: 4)
        var keptByRate = SpanBatch()
        for second in 0..<UInt64(6) {
            rated.admit(traces(3_000, firstID: 1_000_000 * (second + 1)), now: second * 1_000_000_000, into: &keptByRate)
            rated.releaseAll(now: second * 1_000_000_000 + 1, into: &keptByRate)
        }
        let lastSecond = (0..<keptByRate.count).filter { keptByRate.traceIDs[$0].high >= 6_000_000 }.count
        XCTAssertEqual(Double(lastSecond), 300, accuracy: 120, "the limit holds for the sampler, not for each shard")
    }

    /// A collector that crashes with traces undecided, and reopens, keeps exactly the
    /// traces one that never stopped keeps: undecided spans are carried into the next
    /// WAL file at each seal, and replayed.
    func testDecisionsSurviveARestart() throws {
        let traffic = MeshSim.arrivals(requests: 600, rate: 100, requestErrorRate: 0.05, seed: 9)
        let (requests, _) = (traffic.map { try! $0.batch.exportRequestBytes() }, 0)
        let yaml = """
            decision_wait: 1h
            root_wait: 1h
            policies:
              - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
              - {name: baseline, type: probabilistic, probabilistic: {sampling_percentage: 10}}
            """
        func run(crashAt crash: Int?) throws -> Set<TraceID> {
            let directory = temporaryDirectory(self)
            var store: SpanStore? = try SpanStore(
                configuration: .init(dataDirectory: directory), admission: TailSampler(policy: try PolicyFile.parse(yaml: yaml, file: "t")))
            for (index, bytes) in requests.enumerated() {
                _ = try store!.append(try DecodedTraceExport(protobuf: bytes))
                if index == requests.count / 3 { try store!.seal() }
                if index == crash {
                    store = nil  // a crash: nothing decided, nothing sealed
                    store = try SpanStore(
                        configuration: .init(dataDirectory: directory), admission: TailSampler(policy: try PolicyFile.parse(yaml: yaml, file: "t")))
                }
            }
            try store!.seal(decidingHeld: true)
            let snapshot = store!.snapshot()
            var traces: Set<TraceID> = []
            var spans = 0
            for segment in snapshot.segments {
                let batch = try segment.readBatch()
                spans += batch.count
                traces.formUnion(batch.traceIDs)
            }
            var perTrace: [TraceID: Int] = [:]
            for segment in snapshot.segments { for id in try segment.readBatch().traceIDs { perTrace[id, default: 0] += 1 } }
            XCTAssertEqual(perTrace.values.reduce(0, +), spans)
            return traces
        }
        let steady = try run(crashAt: nil)
        let crashed = try run(crashAt: requests.count * 2 / 3)
        XCTAssertGreaterThan(steady.count, 50)
        XCTAssertEqual(steady, crashed)
    }

    /// Decided traces leave their slots' small span lists behind for the next traces,
    /// counted as held: the count neither drifts as slots are taken again round after
    /// round, nor grows past a bound when a burst frees many slots at once.
    func testSpareSpanListsAreCountedAndBounded() throws {
        let policy = try PolicyFile.parse(yaml: """
            decision_wait: 1h
            policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]
            """, file: "t.yaml")
        let sampler = TailSampler(policy: policy, shards: 1)
        var template = SpanBatch()
        let resource = template.intern(resource: ResourceEntry(serviceName: "a", encoded: []))
        let scope = template.intern(scope: [])
        var counter: UInt64 = 0
        func admitTraces(_ traces: Int, spansEach: Int) {
            var batch = template
            for _ in 0..<traces {
                counter += 1
                for span in 0..<UInt64(spansEach) {
                    batch.append(SpanBatch.Row(
                        traceID: TraceID(high: counter, low: counter &* 0x9E37_79B9_7F4A_7C15), spanID: SpanID(counter << 8 | (span + 1)),
                        parentSpanID: span == 0 ? .zero : SpanID(counter << 8 | 1), name: "op", kind: .server, startTime: 1, endTime: 2,
                        statusCode: .unset, statusMessage: "", httpStatusCode: 200, resourceIndex: resource, scopeIndex: scope,
                        attributes: [], extras: []))
                }
            }
            var kept = SpanBatch()
            sampler.admit(batch, now: 1, into: &kept)
        }
        var spare: [Int] = []
        for round in 0..<4 {
            admitTraces(2_000, spansEach: 5)
            // Open, the traces hold every list (the first round's new, the others' taken back).
            XCTAssertEqual(sampler.statistics.spareListBytes, 0, "round \(round)")
            var kept = SpanBatch()
            sampler.releaseAll(now: 2, into: &kept)
            let statistics = sampler.statistics
            XCTAssertEqual(statistics.openTraces, 0)
            XCTAssertLessThanOrEqual(statistics.spareListBytes, statistics.heldBytes)
            spare.append(statistics.spareListBytes)
        }
        // 2,000 lists, each with room for the five spans of its trace or more.
        XCTAssertEqual(Set(spare).count, 1, "\(spare)")
        XCTAssertGreaterThanOrEqual(spare[0], 2_000 * (32 + 5 * 8))
        // A burst: 50,000 traces open at once, then all decided; at most 4,096 free slots keep their lists.
        admitTraces(50_000, spansEach: 2)
        var kept = SpanBatch()
        sampler.releaseAll(now: 3, into: &kept)
        XCTAssertLessThanOrEqual(sampler.statistics.spareListBytes, TailSampler.maxSpareLists * (32 + TailSampler.maxSpareList * 8))
        XCTAssertGreaterThan(sampler.statistics.spareListBytes, 0)
    }

    /// A burst of a million traces open at once stays within the buffer's byte budget:
    /// the oldest are decided early, and every span is accounted for.
    func testAMillionOpenTracesStayWithinTheByteBudget() throws {
        let budget = 64 << 20
        let policy = try PolicyFile.parse(yaml: """
            decision_wait: 1h
            max_buffer_bytes: 64MiB
            num_traces: 10000000
            policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]
            """, file: "t.yaml")
        let sampler = TailSampler(policy: policy)
        var template = SpanBatch()
        let resource = template.intern(resource: ResourceEntry(serviceName: "a", encoded: []))
        let scope = template.intern(scope: [])
        let attributes = try [KeyValue("url.path", "/api/cart/12345"), KeyValue("peer.address", "10.0.0.1:8080")]
            .reduce(into: [UInt8]()) { bytes, pair in bytes += try KeyValueList.with { $0.values = [pair] }.serializedBytes() }
        var kept = SpanBatch()
        var counter: UInt64 = 0
        for _ in 0..<100 {
            var batch = template
            batch.reserveCapacity(10_000)
            for _ in 0..<10_000 {
                counter += 1
                batch.append(SpanBatch.Row(
                    traceID: TraceID(high: counter, low: counter &* 0x9E37_79B9_7F4A_7C15), spanID: SpanID(counter),
                    parentSpanID: SpanID(1), name: "op", kind: .server, startTime: 1, endTime: 2, statusCode: .unset,
                    statusMessage: "", httpStatusCode: 200, resourceIndex: resource, scopeIndex: scope, attributes: attributes, extras: []))
            }
            sampler.admit(batch, now: 1, into: &kept)
            XCTAssertLessThanOrEqual(sampler.statistics.heldBytes, budget)
        }
        let statistics = sampler.statistics
        XCTAssertEqual(statistics.spansReceived, 1_000_000)
        XCTAssertLessThanOrEqual(statistics.maxHeldBytes, budget)
        XCTAssertGreaterThan(statistics.forcedByBytes, 100_000, "the oldest traces were decided early")
        XCTAssertGreaterThan(statistics.openTraces, 50_000, "the newest still wait")
        XCTAssertEqual(UInt64(statistics.openTraces) + statistics.tracesDropped + statistics.tracesKept, 1_000_000)
        XCTAssertEqual(statistics.heldSpans, sampler.held().count)
        XCTAssertEqual(statistics.spansKept + statistics.spansDropped + UInt64(statistics.heldSpans), 1_000_000)
    }
}
