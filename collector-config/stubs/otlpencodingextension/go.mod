// Placeholder for a module that the Go module proxy does not serve.
// fileexporter's tests (encoding_test.go) import it; its non-test code does not, so this
// package is never compiled into otelcol-sparse. It exists only so `go mod tidy` can
// resolve every import of fileexporter's test files.
module github.com/open-telemetry/opentelemetry-collector-contrib/extension/encoding/otlpencodingextension

go 1.25
