/// The simulated mesh: services in namespaces, their pods, and who calls whom.
public struct Mesh: Sendable {
    /// One HTTP route a service serves.
    public struct Route: Sendable {
        public var method: String
        /// The route template; `{id}` is replaced by a number in `url.path`.
        public var template: String
    }

    /// A call a service may make while serving a request.
    public struct Call: Sendable {
        /// Index of the callee in `services`.
        public var callee: Int
        /// Probability that a request makes this call.
        public var probability: Double
    }

    public struct Service: Sendable {
        public var name: String
        public var namespace: String
        public var version: String
        /// Median of the service's own work per request, in milliseconds.
        public var medianMilliseconds: Double
        public var routes: [Route]
        public var calls: [Call]
        /// Indices into `pods`.
        public var pods: [Int]
        public var port: Int
        public var userAgent: String
    }

    public struct Pod: Sendable {
        public var name: String
        public var service: Int
        public var address: String
        public var zone: String
        public var node: String
    }

    public var services: [Service]
    public var pods: [Pod]
    /// Index of the service that receives requests from outside the mesh.
    public var entry: Int

    /// The standard mesh: 15 services in 4 namespaces, averaging about 8 hops per request.
    public static func standard(seed: UInt64) -> Mesh {
        var random = SeededGenerator(seed: seed ^ 0x6D65_7368)
        let catalogue: [(String, String, String, Double, [(String, String)], String)] = [
            ("frontend", "edge", "v3", 4, [("GET", "/"), ("GET", "/product/{id}"), ("POST", "/cart/checkout")], "Mozilla/5.0 (X11; Linux x86_64)"),
            ("catalog", "shop", "v2", 3, [("GET", "/api/products"), ("GET", "/api/products/{id}")], "envoy/1.31 catalog"),
            ("cart", "shop", "v1", 2, [("GET", "/api/cart/{id}"), ("POST", "/api/cart/{id}/items")], "envoy/1.31 cart"),
            ("recommendations", "shop", "v1", 6, [("GET", "/api/recommendations/{id}")], "python-requests/2.32"),
            ("users", "platform", "v4", 1.5, [("GET", "/api/users/{id}")], "grpc-go/1.62"),
            ("inventory", "shop", "v2", 2.5, [("GET", "/api/stock/{id}")], "envoy/1.31 inventory"),
            ("pricing", "shop", "v1", 1.2, [("GET", "/api/prices/{id}")], "envoy/1.31 pricing"),
            ("search", "shop", "v1", 8, [("GET", "/api/search")], "envoy/1.31 search"),
            ("checkout", "shop", "v2", 5, [("POST", "/api/checkout")], "okhttp/4.12"),
            ("payments", "payments", "v3", 9, [("POST", "/api/payments")], "grpc-java/1.63"),
            ("shipping", "shop", "v1", 3, [("POST", "/api/shipments")], "envoy/1.31 shipping"),
            ("fraud", "payments", "v1", 7, [("POST", "/api/score")], "python-httpx/0.27"),
            ("ledger", "payments", "v2", 4, [("POST", "/api/entries")], "grpc-java/1.63"),
            ("auth", "platform", "v5", 0.8, [("POST", "/api/tokens/verify")], "grpc-go/1.62"),
            ("currency", "shop", "v1", 0.6, [("GET", "/api/rates")], "node-fetch/3.3"),
        ]
        let index = Dictionary(uniqueKeysWithValues: catalogue.enumerated().map { ($1.0, $0) })
        let graph: [String: [(String, Double)]] = [
            "frontend": [("catalog", 0.9), ("cart", 0.6), ("recommendations", 0.5), ("users", 0.7)],
            "catalog": [("inventory", 0.6), ("pricing", 0.7), ("search", 0.3)],
            "cart": [("pricing", 0.8), ("inventory", 0.5), ("checkout", 0.3)],
            "checkout": [("payments", 0.95), ("shipping", 0.8), ("users", 0.5)],
            "payments": [("fraud", 0.9), ("ledger", 0.9)],
            "fraud": [("users", 0.5)],
            "recommendations": [("catalog", 0.3), ("users", 0.4)],
            "users": [("auth", 0.8)],
            "pricing": [("currency", 0.5)],
            "shipping": [("currency", 0.3)],
        ]
        let zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
        var services: [Service] = []
        var pods: [Pod] = []
        for (serviceIndex, entry) in catalogue.enumerated() {
            let (name, namespace, version, median, routes, userAgent) = entry
            var podIndices: [Int] = []
            let hash = String(random.next() & 0xFFFF_FFFF, radix: 16)
            for _ in 0..<random.int(in: 2...3) {
                let suffix = String((0..<5).map { _ in "bcdfghjklmnpqrstvwxz2456789".randomElement(using: &random)! })
                podIndices.append(pods.count)
                pods.append(Pod(
                    name: "\(name)-\(hash)-\(suffix)", service: serviceIndex,
                    address: "10.\(random.int(in: 0...3)).\(random.int(in: 0...255)).\(random.int(in: 2...254))",
                    zone: zones[random.int(in: 0...2)], node: "node-\(random.int(in: 1...12))"))
            }
            services.append(Service(
                name: name, namespace: namespace, version: version, medianMilliseconds: median,
                routes: routes.map { Route(method: $0.0, template: $0.1) },
                calls: (graph[name] ?? []).map { Call(callee: index[$0.0]!, probability: $0.1) },
                pods: podIndices, port: 8080, userAgent: userAgent))
        }
        return Mesh(services: services, pods: pods, entry: index["frontend"]!)
    }

    /// The cluster-local host name of a service.
    public func host(of service: Int) -> String {
        "\(services[service].name).\(services[service].namespace).svc.cluster.local"
    }
}
