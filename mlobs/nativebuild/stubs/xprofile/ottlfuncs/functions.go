// Package ottlfuncs: stand-in for the OTTL profile functions.
package ottlfuncs

import "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/ottl"

// WithProfileConverters adds no converters in this stand-in.
func WithProfileConverters[K any](funcs map[string]ottl.Factory[K]) map[string]ottl.Factory[K] {
	return funcs
}
