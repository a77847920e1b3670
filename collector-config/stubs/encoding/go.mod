// Placeholder for a module that the Go module proxy does not serve at v0.155.0.
// fileexporter's go.mod requires it (indirectly, for its tests' otlpencodingextension);
// nothing that otelcol-sparse compiles imports it. Holds no packages on purpose, so a
// real import of it fails the build loudly instead of compiling a stand-in.
module github.com/open-telemetry/opentelemetry-collector-contrib/extension/encoding

go 1.25
