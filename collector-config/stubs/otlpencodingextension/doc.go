// Package otlpencodingextension is an empty placeholder; see go.mod.
package otlpencodingextension
