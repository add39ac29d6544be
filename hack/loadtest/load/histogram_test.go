package load

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestBucketsAreContiguous(t *testing.T) {
	// Every bucket starts where the previous one ends, and every value maps
	// to the bucket whose bounds contain it.
	for b := 1; b < 56<<subBits; b++ { // beyond: durations past 2^63 ns
		assert.Greater(t, lowerBound(b), lowerBound(b-1), "bucket %d", b)
		assert.Equal(t, b, bucketOf(lowerBound(b)), "bucket %d", b)
		assert.Equal(t, b-1, bucketOf(lowerBound(b)-1), "bucket %d", b)
	}
	assert.Equal(t, 0, bucketOf(-time.Second))
	assert.Less(t, bucketOf(time.Duration(1<<63-1)), 64<<subBits)
}

func TestQuantileMatchesSortedSamples(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h, a, b histogram
	samples := make([]time.Duration, 100_000)
	for i := range samples {
		// Log-normal-ish spread from ~10 µs to ~100 ms, like real latencies.
		d := time.Duration(10_000 * (1 + rng.ExpFloat64()*rng.ExpFloat64()*50))
		samples[i] = d
		h.record(d)
		if i%2 == 0 {
			a.record(d)
		} else {
			b.record(d)
		}
	}
	a.merge(&b)
	assert.Equal(t, h, a, "merging halves equals recording all")

	slices.Sort(samples)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
		exact := samples[int(q*float64(len(samples))+0.999999999)-1]
		got := h.quantile(q)
		assert.InEpsilon(t, float64(exact), float64(got), 1.0/(1<<subBits), "q=%v", q)
	}
	assert.Equal(t, samples[len(samples)-1], h.quantile(1))
	assert.Equal(t, samples[len(samples)-1], h.max)

	var empty histogram
	assert.Zero(t, empty.quantile(0.99))
}
