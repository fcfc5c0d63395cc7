// Package conversion: stand-in for the exponential histogram conversion.
package conversion

import (
	"errors"

	"go.opentelemetry.io/collector/pdata/pcommon"
)

type Buckets struct {
	Offset int32
	Counts pcommon.UInt64Slice
}

type ExponentialHistogram struct {
	Count         uint64
	Scale         int32
	ZeroThreshold float64
	ZeroCount     uint64
	Positive      Buckets
	Negative      Buckets
}

// ToExplicit is not available in this build.
func ToExplicit(ExponentialHistogram, []float64, string) ([]uint64, error) {
	return nil, errors.New("exponential histogram conversion is not available in this collector build " +
		"(built by mlobs without the pkg/expohisto module)")
}
