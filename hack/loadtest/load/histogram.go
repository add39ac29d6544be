package load

import (
	"math/bits"
	"time"
)

// histogram records latencies in log-linear buckets, HDR-style: each power
// of two is split into 2^subBits linear sub-buckets, so a percentile read
// from it is within 1/2^subBits (under 1%) of the true sample, in constant
// memory however long the run (a 30-minute soak at full speed would be
// tens of millions of samples). Max is tracked exactly.
type histogram struct {
	counts [64 << subBits]int64
	n      int64
	max    time.Duration
}

const subBits = 7

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < 1<<subBits {
		return int(v) // exact below 128 ns
	}
	exp := bits.Len64(v) - 1 - subBits // how far v is shifted to keep subBits+1 bits
	return (exp+1)<<subBits + int(v>>exp) - 1<<subBits
}

// lowerBound is the smallest duration that falls in bucket b.
func lowerBound(b int) time.Duration {
	if b < 1<<subBits {
		return time.Duration(b)
	}
	exp := b>>subBits - 1
	mant := b&(1<<subBits-1) | 1<<subBits
	return time.Duration(uint64(mant) << exp)
}

func (h *histogram) record(d time.Duration) {
	h.counts[bucketOf(d)]++
	h.n++
	h.max = max(h.max, d)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the q-quantile (0 < q ≤ 1): the midpoint of the bucket
// holding the ceil(q·n)-th smallest sample, capped at the exact max.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := int64(q*float64(h.n) + 0.999999999)
	rank = min(max(rank, 1), h.n)
	var seen int64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := lowerBound(b), lowerBound(b+1)
			return min((lo+hi)/2, h.max)
		}
	}
	return h.max
}
