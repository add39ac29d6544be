package scenario

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/hack/loadtest/load"
)

// These tests start the real webhook (and the null baseline) as processes
// on loopback and break them under load. Under -race the servers are built
// with the race detector too (cheap: the packages are already compiled for
// the tests, and it checks the server's concurrency under load), which
// makes them several times slower: the load here is light, and the
// thresholds generous. Short by default; the soak's length is a flag:
//
//	go test ./hack/loadtest/scenario -run TestSoak -soak 60s   (make soak)
var soakFor = flag.Duration("soak", 0, "run TestSoak this long and require flat RSS (0: a short run that checks errors only)")

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds the webhook and the load tool (which serves the null
// baseline) once per test process, with the race detector when the tests
// have it: the servers then check themselves for races under load.
// PODMETA_WEBHOOK_BIN overrides the webhook binary.
func binaries(t *testing.T) (webhook, loadtest string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "podmeta-scenario-bin-")
		if buildErr != nil {
			return
		}
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			goBin = "go"
		}
		pkgs := map[string]string{"webhook": "github.com/podmeta/podmeta/cmd/webhook", "loadtest": "github.com/podmeta/podmeta/hack/loadtest"}
		if os.Getenv("PODMETA_WEBHOOK_BIN") != "" {
			delete(pkgs, "webhook")
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for name, pkg := range pkgs {
			wg.Go(func() {
				args := []string{"build", "-o", filepath.Join(binDir, name)}
				if raceEnabled {
					args = append(args, "-race")
				}
				out, err := exec.Command(goBin, append(args, pkg)...).CombinedOutput()
				if err != nil {
					mu.Lock()
					buildErr = &buildError{pkg: pkg, out: string(out), err: err}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	})
	require.NoError(t, buildErr)
	webhook = filepath.Join(binDir, "webhook")
	if b := os.Getenv("PODMETA_WEBHOOK_BIN"); b != "" {
		webhook = b
	}
	return webhook, filepath.Join(binDir, "loadtest")
}

type buildError struct {
	pkg, out string
	err      error
}

func (e *buildError) Error() string { return "go build " + e.pkg + ": " + e.err.Error() + "\n" + e.out }

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func setup(t *testing.T) (*Env, Servers) {
	t.Helper()
	webhook, loadtest := binaries(t)
	dir := t.TempDir()
	env, err := NewEnv(dir)
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range []string{Webhook, Null} {
				if s := env.LogTail(n); s != "" {
					t.Logf("%s log tail:\n%s", n, s)
				}
			}
		}
	})
	return env, Servers{WebhookArgv: []string{webhook, "serve"}, NullArgv: []string{loadtest, "null"}, CPU: -1}
}

func TestRotationUnderLoad(t *testing.T) {
	env, servers := setup(t)
	rep, err := Rotate(context.Background(), env, RotateConfig{
		FaultConfig: FaultConfig{Servers: servers, Workers: 4, Duration: time.Minute},
		Every:       500 * time.Millisecond, Swaps: 3, ReconnectEvery: 5, MaxLag: time.Second,
	})
	require.NoError(t, err)
	assert.Empty(t, rep.Problems)
	assert.Zero(t, rep.Result.Requests-rep.Result.OK, "%v", rep.Result.Samples)
	assert.Equal(t, 3, rep.Judged(), "swaps checked by later connections: %+v", rep.Rotations)
	t.Logf("%d requests, %d connections, %d swaps, %d checked, slowest swap to first new handshake %s",
		rep.Result.Requests, rep.Result.Conns, len(rep.Rotations)-1, rep.Judged(), rep.MaxLag)
}

// The null server loads its certificate once: the rotation check must
// catch that (a check that cannot fail proves nothing).
func TestRotationCheckCatchesAStaticCertificate(t *testing.T) {
	env, servers := setup(t)
	rep, err := Rotate(context.Background(), env, RotateConfig{
		FaultConfig: FaultConfig{Servers: servers, Target: Null, Workers: 4, Duration: time.Minute},
		Every:       300 * time.Millisecond, Swaps: 2, ReconnectEvery: 5, MaxLag: 300 * time.Millisecond,
	})
	require.NoError(t, err)
	assert.Positive(t, rep.StaleConns)
	assert.Contains(t, strings.Join(rep.Problems, "\n"), "presented an older certificate")
}

func TestSigtermUnderLoad(t *testing.T) {
	env, servers := setup(t)
	rep, err := Signal(context.Background(), env, SignalConfig{
		FaultConfig: FaultConfig{Servers: servers, Workers: 16},
		After:       time.Second, Grace: 25 * time.Second,
	})
	require.NoError(t, err)
	assert.Empty(t, rep.Problems)
	assert.Zero(t, rep.Failures)
	assert.Empty(t, rep.ExitError)
	t.Logf("answered %d, not accepted %d (%v), exit %s after SIGTERM", rep.Answered, rep.NotAccepted, rep.Result.Errors, rep.ExitAfter)
}

// A rolling restart as the API server sees it: SIGTERM, /readyz fails, the
// client stops picking this replica, the process exits after the shutdown
// delay. Every review sent must be answered, none refused or closed unread
// (closing idle connections at SIGTERM, as the webhook once did, fails
// this).
func TestSigtermDrainUnderLoad(t *testing.T) {
	env, servers := setup(t)
	rep, err := Signal(context.Background(), env, SignalConfig{
		FaultConfig: FaultConfig{Servers: servers, Workers: 16},
		After:       time.Second, Grace: 25 * time.Second, Drain: time.Second,
	})
	require.NoError(t, err)
	assert.Empty(t, rep.Problems)
	assert.Zero(t, rep.Failures)
	assert.Zero(t, rep.NotAccepted, "%v", rep.Result.Errors)
	assert.Empty(t, rep.ExitError)
	assert.GreaterOrEqual(t, rep.ExitAfter, time.Second, "the shutdown delay was kept")
	t.Logf("answered %d (%d with Connection: close), %v, exit %s after SIGTERM", rep.Answered, rep.Result.CloseAnswers, rep.Result.Errors, rep.ExitAfter)
}

// SIGKILL under load loses the requests the server was holding: the
// SIGTERM check must see that (the control for the test above). The server
// holds only the one or two requests it is working on at any instant, so a
// kill can land with none in hand; it is tried up to five times.
func TestSigkillDropsAreCaught(t *testing.T) {
	env, servers := setup(t)
	for try := 1; ; try++ {
		rep, err := Signal(context.Background(), env, SignalConfig{
			FaultConfig: FaultConfig{Servers: servers, Workers: 16},
			After:       500 * time.Millisecond, Grace: 5 * time.Second, Signal: syscall.SIGKILL,
		})
		require.NoError(t, err)
		assert.NotEmpty(t, rep.ExitError)
		for k := range rep.Result.Errors {
			// read: the kill cut a response short.
			assert.Contains(t, []string{load.ErrDropped, load.ErrRead, load.ErrClosedUnread, load.ErrRefused}, k, rep.Result.Samples[k])
		}
		if rep.Result.Errors[load.ErrDropped] > 0 {
			assert.Equal(t, rep.Result.Errors[load.ErrDropped]+rep.Result.Errors[load.ErrRead], rep.Failures, "dropped and cut-short requests are failures")
			t.Logf("try %d: %v", try, rep.Result.Errors)
			return
		}
		require.Less(t, try, 5, "five SIGKILLs under load and not one dropped request seen: %v", rep.Result.Errors)
	}
}

func TestSoak(t *testing.T) {
	env, servers := setup(t)
	d := *soakFor
	if d == 0 {
		d = 2 * time.Second
	}
	rep, err := Soak(context.Background(), env, SoakConfig{
		FaultConfig: FaultConfig{Servers: servers, Workers: 8, Duration: d},
		Rate:        100,
	})
	require.NoError(t, err)
	assert.Zero(t, rep.Result.Requests-rep.Result.OK, "%v: %v", rep.Result.Errors, rep.Result.Samples)
	assert.Positive(t, rep.Result.OK)
	if *soakFor > 0 {
		assert.Empty(t, rep.Problems)
		assert.True(t, rep.Flat, "RSS %d → %d", rep.StartRSS, rep.EndRSS)
	}
	t.Logf("%d requests at %.0f/s, p99 %s; RSS first half %.1f MiB, second half %.1f MiB, peak %.1f MiB",
		rep.Result.Requests, rep.Result.Throughput, rep.Result.Latency.P99,
		float64(rep.StartRSS)/(1<<20), float64(rep.EndRSS)/(1<<20), float64(rep.PeakRSS)/(1<<20))
}
