package proc

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseStat(t *testing.T) {
	for name, tc := range map[string]struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		"plain":                 {in: "42 (webhook) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 7 0 1000 1 1", want: 3250 * time.Millisecond},
		"name with paren space": {in: "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 7 0 1000 1 1", want: 30 * time.Millisecond},
		"truncated":             {in: "42 (webhook) S 1 42", wantErr: true},
		"no name":               {in: "42 webhook S", wantErr: true},
		"bad number":            {in: "42 (webhook) S 1 42 42 0 -1 4194560 100 0 0 0 x 75 0", wantErr: true},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.in))
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseStatus(t *testing.T) {
	m, err := parseStatus([]byte("Name:\twebhook\nVmPeak:\t 1000 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nRssAnon:\t    4096 kB\nRssFile:\t    6144 kB\nThreads:\t7\n"))
	require.NoError(t, err)
	assert.Equal(t, Memory{RSS: 10 << 20, Peak: 20 << 20, Anon: 4 << 20}, m)

	// RssAnon is optional (kernels before 4.5).
	m, err = parseStatus([]byte("VmHWM:\t 2 kB\nVmRSS:\t 1 kB\n"))
	require.NoError(t, err)
	assert.Equal(t, Memory{RSS: 1 << 10, Peak: 2 << 10}, m)

	_, err = parseStatus([]byte("Name:\tkthreadd\nThreads:\t1\n"))
	assert.Error(t, err)
	_, err = parseStatus([]byte("VmHWM:\t 1 MB\nVmRSS:\t 1 kB\n"))
	assert.Error(t, err)
}

// The real files of this very process parse, and its figures are plausible.
func TestSelf(t *testing.T) {
	pid := os.Getpid()
	m, err := ReadMemory(pid)
	require.NoError(t, err)
	assert.Greater(t, m.RSS, int64(1<<20))
	assert.GreaterOrEqual(t, m.Peak, m.RSS)

	before, err := CPUTime(pid)
	require.NoError(t, err)
	deadline := time.Now().Add(10 * time.Second)
	for {
		after, err := CPUTime(pid)
		require.NoError(t, err)
		if after > before {
			break
		}
		require.True(t, time.Now().Before(deadline), "cpu time never advanced while spinning")
		for i := 0; i < 1e6; i++ { // burn CPU so the counter moves
			_ = i * i
		}
	}
}
