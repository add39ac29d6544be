//go:build !unix

package admission

import (
	"testing"
	"time"
)

// cpuTime is not measured here; benchmarks then report 0 cpu-ns/op.
func cpuTime(testing.TB) time.Duration { return 0 }
