/*
 * meshexporter.h — the C interface of MeshExporter, meshtrace's proxy-embedded
 * span and RED-metrics exporter, for data planes written in C, C++ or Rust.
 *
 * Link with -lmeshexporter (libmeshexporter.so, built by `swift build --product
 * meshexporter`). Every function is safe to call from any thread.
 *
 * Recording (meshexporter_record) copies the span into a fixed-size ring and
 * returns: it neither allocates nor waits on the network. Spans and metrics are
 * sent from a background thread, as OTLP over HTTP (gzip or zstd) or gRPC.
 */
#ifndef MESHEXPORTER_H
#define MESHEXPORTER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct meshexporter meshexporter;

enum meshexporter_transport { MESHEXPORTER_HTTP = 0, MESHEXPORTER_GRPC = 1 };
enum meshexporter_compression {
    MESHEXPORTER_COMPRESSION_NONE = 0,
    MESHEXPORTER_COMPRESSION_GZIP = 1,
    MESHEXPORTER_COMPRESSION_ZSTD = 2 /* OTLP/HTTP only; gRPC sends gzip */
};
/* OTLP SpanKind values. */
enum meshexporter_kind { MESHEXPORTER_KIND_INTERNAL = 1, MESHEXPORTER_KIND_SERVER = 2, MESHEXPORTER_KIND_CLIENT = 3 };

typedef struct {
    /* "http://127.0.0.1:4318" (HTTP) or "127.0.0.1:4317" (gRPC). Required. */
    const char *endpoint;
    int transport;   /* enum meshexporter_transport */
    int compression; /* enum meshexporter_compression */
    /* service.name of the proxied workload. Required. */
    const char *service_name;
    /* Further resource attributes: key, value, key, value, ..., NULL. May be NULL. */
    const char *const *resource_attributes;
    /* Bytes the exporter may hold; 0 means 4 MiB. */
    size_t memory_limit;
    /* Longest a span waits before it is sent, in ms; 0 means 1000. */
    uint32_t flush_interval_ms;
    /* Head sampling probability of traces that start here, 0 to 1. */
    double sampling_probability;
    /* TLS to the collector: the CA bundle (PEM) that signs its certificate; NULL is
       plaintext. With tls_cert_file and tls_key_file (this workload's certificate,
       its SPIFFE ID as URI SAN, and key), mTLS. The files are read again when they
       change. */
    const char *tls_ca_file;
    const char *tls_cert_file;
    const char *tls_key_file;
} meshexporter_config;

typedef struct {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t parent_span_id[8]; /* all zero for a root span */
    const char *name;          /* "GET /api/orders/{id}" */
    int kind;                  /* enum meshexporter_kind */
    uint64_t start_time_ns;    /* since the Unix epoch */
    uint64_t end_time_ns;
    uint16_t http_status;      /* 0: no response */
    int failed;                /* nonzero: status ERROR */
    /* Attributes; NULL or "" leaves one out. */
    const char *method, *path, *peer_service, *upstream_cluster, *peer_address;
    const char *response_flags, *request_id, *user_agent;
    const char *trace_state;   /* the W3C tracestate to store (meshexporter_sample fills one) */
    uint64_t request_bytes, response_bytes;
    int mutual_tls;            /* 1 mTLS, 0 plaintext, -1 unknown */
} meshexporter_span;

typedef struct {
    uint64_t recorded;              /* spans taken into the ring */
    uint64_t sampled_out;           /* recorded, not exported (still counted in RED metrics) */
    uint64_t exported;              /* accepted by the collector */
    uint64_t dropped_buffer_full;   /* dropped: the ring was full */
    uint64_t dropped_export_failed; /* dropped: refused for good, or past the retry limit */
    uint64_t rejected_by_collector; /* refused one by one (OTLP partial_success) */
    uint64_t truncated;             /* strings cut to fit a slot */
    uint64_t requests;              /* export attempts */
    uint64_t retries;
} meshexporter_stats;

/* Starts an exporter; NULL on a bad configuration, with the reason in `error`. */
meshexporter *meshexporter_start(const meshexporter_config *config, char *error, size_t error_size);

/* Records one span; `exported` is the sampling decision. Returns 1, or 0 when the
 * ring was full and the span was dropped (and counted). */
int meshexporter_record(meshexporter *exporter, const meshexporter_span *span, int exported);

/* A label for a string a proxy repeats on many spans (a route's name, a method, an
 * upstream cluster, a peer service, "-"): the exporter's own NUL-terminated copy of
 * `text`, valid until meshexporter_stop. A span field that points at it is recorded
 * as a two-byte label instead of a copy of the string. The same text gives the same
 * pointer. NULL when the text is longer than 1,024 bytes or the exporter holds 4,096
 * labels (64 KiB) already: pass the string itself then. */
const char *meshexporter_label(meshexporter *exporter, const char *text);

/* The head sampling decision for a span of `trace_id`, continuing `traceparent`
 * (NULL when the request carried none). Writes the tracestate to record and pass
 * on into `tracestate_out` (NUL-terminated, possibly empty). Returns 1 to export. */
int meshexporter_sample(meshexporter *exporter, const uint8_t trace_id[16], const char *traceparent,
                        const char *tracestate, char *tracestate_out, size_t tracestate_size);

/* Sends everything recorded so far; returns when it is sent or given up on. */
void meshexporter_flush(meshexporter *exporter);

void meshexporter_get_stats(meshexporter *exporter, meshexporter_stats *stats);

/* Flushes, stops and frees the exporter. */
void meshexporter_stop(meshexporter *exporter);

#ifdef __cplusplus
}
#endif

#endif
