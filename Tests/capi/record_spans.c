/*
 * Records spans through the C interface of MeshExporter and exports them to a
 * collector: argv[1] endpoint, argv[2] "http" or "grpc", argv[3] number of
 * traces. Each trace is a SERVER span and a CLIENT child. Prints the trace ids
 * and the exporter's counters, one per line, for the test that runs it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "meshexporter.h"

static void fill_id(uint8_t *id, size_t size, uint64_t seed) {
    for (size_t i = 0; i < size; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        id[i] = (uint8_t)(seed >> 56);
    }
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s ENDPOINT http|grpc TRACES [TLS-DIR]\n", argv[0]);
        return 2;
    }
    /* With TLS-DIR: mTLS with TLS-DIR/ca.pem, checkout.pem and checkout-key.pem. */
    char ca[1024], cert[1024], key[1024];
    if (argc == 5) {
        snprintf(ca, sizeof ca, "%s/ca.pem", argv[4]);
        snprintf(cert, sizeof cert, "%s/checkout.pem", argv[4]);
        snprintf(key, sizeof key, "%s/checkout-key.pem", argv[4]);
    }
    const char *resource[] = {"k8s.namespace.name", "shop", "k8s.pod.name", "checkout-7d4f9", NULL};
    meshexporter_config config = {
        .endpoint = argv[1],
        .transport = strcmp(argv[2], "grpc") == 0 ? MESHEXPORTER_GRPC : MESHEXPORTER_HTTP,
        .compression = MESHEXPORTER_COMPRESSION_GZIP,
        .service_name = "checkout",
        .resource_attributes = resource,
        .memory_limit = 0,
        .flush_interval_ms = 100,
        .sampling_probability = 1.0,
        .tls_ca_file = argc == 5 ? ca : NULL,
        .tls_cert_file = argc == 5 ? cert : NULL,
        .tls_key_file = argc == 5 ? key : NULL,
    };
    char error[256];
    meshexporter *exporter = meshexporter_start(&config, error, sizeof error);
    if (exporter == NULL) {
        fprintf(stderr, "meshexporter_start: %s\n", error);
        return 1;
    }
    meshexporter_config bad = config;
    bad.transport = 7;
    if (meshexporter_start(&bad, error, sizeof error) != NULL || strstr(error, "transport") == NULL) {
        fprintf(stderr, "a bad transport was not refused: %s\n", error);
        return 1;
    }

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t start = (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
    int traces = atoi(argv[3]);
    /* The client spans' route and cluster strings by label: registered once, passed by address. */
    const char *payments = meshexporter_label(exporter, "payments");
    const char *payments_cluster = meshexporter_label(exporter, "outbound|8080||payments.shop.svc.cluster.local");
    const char *get_payment = meshexporter_label(exporter, "GET /api/payments/{id}");
    if (!payments || !payments_cluster || !get_payment || payments != meshexporter_label(exporter, "payments")
        || strcmp(payments_cluster, "outbound|8080||payments.shop.svc.cluster.local") != 0) {
        fprintf(stderr, "labels: not one stable copy per text\n");
        return 2;
    }
    for (int t = 0; t < traces; t++) {
        meshexporter_span server;
        memset(&server, 0, sizeof server);
        fill_id(server.trace_id, 16, (uint64_t)t + 1);
        fill_id(server.span_id, 8, (uint64_t)t + 1000003);
        char tracestate[128];
        int sampled = meshexporter_sample(exporter, server.trace_id, NULL, NULL, tracestate, sizeof tracestate);
        char path[64];
        snprintf(path, sizeof path, "/api/checkout/%d", t);
        server.name = "POST /api/checkout";
        server.kind = MESHEXPORTER_KIND_SERVER;
        server.start_time_ns = start + (uint64_t)t * 1000000ULL;
        server.end_time_ns = server.start_time_ns + 5000000ULL;
        server.http_status = t % 10 == 0 ? 503 : 200;
        server.failed = t % 10 == 0;
        server.method = "POST";
        server.path = path;
        server.upstream_cluster = "inbound|8080||";
        server.peer_address = "10.0.0.9:41234";
        server.response_flags = "-";
        server.request_id = "4bd5c1d0-2c4e-4f1e-8d61-2a9f0e3b7c11";
        server.trace_state = tracestate;
        server.request_bytes = 321;
        server.response_bytes = 1234;
        server.mutual_tls = 1;

        meshexporter_span client = server;
        fill_id(client.span_id, 8, (uint64_t)t + 2000003);
        memcpy(client.parent_span_id, server.span_id, 8);
        client.name = get_payment;
        client.kind = MESHEXPORTER_KIND_CLIENT;
        client.start_time_ns = server.start_time_ns + 1000000ULL;
        client.end_time_ns = client.start_time_ns + 2000000ULL;
        client.method = "GET";
        client.path = "/api/payments/17";
        client.peer_service = payments;
        client.upstream_cluster = payments_cluster;
        client.peer_address = "10.0.0.12:8080";
        client.request_id = NULL;

        if (!meshexporter_record(exporter, &server, sampled) || !meshexporter_record(exporter, &client, sampled)) {
            fprintf(stderr, "ring full at trace %d\n", t);
        }
        printf("trace ");
        for (int i = 0; i < 16; i++) printf("%02x", server.trace_id[i]);
        printf("\n");
    }
    meshexporter_flush(exporter);
    meshexporter_stats stats;
    meshexporter_get_stats(exporter, &stats);
    meshexporter_stop(exporter);
    printf("recorded %llu\nexported %llu\ndropped %llu\nrequests %llu\n", (unsigned long long)stats.recorded,
           (unsigned long long)stats.exported, (unsigned long long)(stats.dropped_buffer_full + stats.dropped_export_failed),
           (unsigned long long)stats.requests);
    return stats.exported == stats.recorded ? 0 : 1;
}
