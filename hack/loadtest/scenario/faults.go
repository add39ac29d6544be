package scenario

import (
	"context"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/podmeta/podmeta/hack/loadtest/corpus"
	"github.com/podmeta/podmeta/hack/loadtest/load"
	"github.com/podmeta/podmeta/hack/loadtest/proc"
	"github.com/podmeta/podmeta/hack/loadtest/target"
)

// FaultConfig is what the fault scenarios share.
type FaultConfig struct {
	Servers  Servers
	Target   string        // Webhook (default) or Null
	Pod      string        // corpus size, default medium
	Workers  int           // default 16
	Duration time.Duration // load duration (for SIGTERM: the upper bound)
}

func (c *FaultConfig) defaults() (*corpus.Review, error) {
	if c.Target == "" {
		c.Target = Webhook
	}
	if c.Pod == "" {
		c.Pod = "medium"
	}
	if c.Workers == 0 {
		c.Workers = 16
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	return corpus.NewReview(c.Pod)
}

// RotateConfig swaps the serving certificate during load.
type RotateConfig struct {
	FaultConfig
	Every time.Duration // between swaps, default 2s
	// ReconnectEvery makes workers open new connections throughout the
	// run (default 20 requests per connection).
	ReconnectEvery int
	// Swaps, if set, ends the run after that many swaps once a connection
	// dialed MaxLag after the last one has completed its handshake
	// (Duration stays the upper bound).
	Swaps int
	// MaxLag is how soon after a swap every new connection must present
	// the new certificate (default 2s; the webhook reacts to the directory
	// event, and polls every 10s as a fallback).
	MaxLag time.Duration
}

// Rotation is one certificate swap and when clients first saw it.
type Rotation struct {
	At     time.Time     `json:"at"`
	Serial string        `json:"serial"`
	Seen   bool          `json:"seen"`
	Lag    time.Duration `json:"lagNs"` // swap to the first handshake presenting it
	// Judged: some connection was dialed more than MaxLag after the swap,
	// so whether the server had switched could be checked.
	Judged bool `json:"judged"`
}

// RotateReport is the outcome of a rotation run.
type RotateReport struct {
	Result    *load.Result `json:"result"`
	Rotations []Rotation   `json:"rotations"`
	// StaleConns are connections dialed more than MaxLag after a swap that
	// still presented an older certificate.
	StaleConns int           `json:"staleConnections"`
	MaxLag     time.Duration `json:"maxLagNs"`
	Problems   []string      `json:"problems,omitempty"`
}

// Rotate runs load against a fresh server while replacing its certificate
// every cfg.Every, and checks that no request fails and that new
// connections see each new certificate within cfg.MaxLag.
func Rotate(ctx context.Context, e *Env, cfg RotateConfig) (*RotateReport, error) {
	review, err := cfg.defaults()
	if err != nil {
		return nil, err
	}
	if cfg.Every == 0 {
		cfg.Every = 2 * time.Second
	}
	if cfg.ReconnectEvery == 0 {
		cfg.ReconnectEvery = 20
	}
	if cfg.MaxLag == 0 {
		cfg.MaxLag = 2 * time.Second
	}
	p, err := e.Start(ctx, cfg.Servers, cfg.Target)
	if err != nil {
		return nil, err
	}
	defer p.Kill()

	var mu sync.Mutex
	var conns []load.ConnInfo // in handshake order
	var answered atomic.Int64
	initial := e.Serving.Cert.SerialNumber
	rotations := []Rotation{{At: time.Now(), Serial: initial.String(), Seen: true}}
	order := map[string]int{initial.String(): 0}

	loadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	type outcome struct {
		res *load.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := load.Run(loadCtx, load.Config{
			URL: p.URL, RootCAs: e.Roots, Review: review, ExpectPatch: cfg.Target == Webhook,
			Workers: cfg.Workers, Duration: cfg.Duration, ReconnectEvery: cfg.ReconnectEvery, Answered: &answered,
			OnConn: func(c load.ConnInfo) {
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			},
		})
		done <- outcome{res, err}
	}()

	// Swap only once the load flows (every worker answered once), and with
	// Swaps set, stop once a connection dialed MaxLag after the last swap
	// has shown its certificate: on a slow machine the run takes longer
	// rather than checking nothing.
	tick := time.NewTicker(cfg.Every)
	defer tick.Stop()
	var out outcome
loop:
	for {
		select {
		case out = <-done:
			break loop
		case <-tick.C:
			if answered.Load() < int64(cfg.Workers) {
				continue
			}
			if cfg.Swaps > 0 && len(rotations) > cfg.Swaps {
				mu.Lock()
				last := rotations[len(rotations)-1].At
				checked := len(conns) > 0 && conns[len(conns)-1].Start.Sub(last) > cfg.MaxLag
				mu.Unlock()
				if checked {
					cancel()
				}
				continue
			}
			s, err := e.Rotate()
			if err != nil {
				cancel()
				<-done
				return nil, err
			}
			mu.Lock()
			order[s.Cert.SerialNumber.String()] = len(rotations)
			rotations = append(rotations, Rotation{At: time.Now(), Serial: s.Cert.SerialNumber.String()})
			mu.Unlock()
		}
	}
	if out.err != nil {
		return nil, out.err
	}
	rep := &RotateReport{Result: out.res, Rotations: rotations}
	mu.Lock()
	defer mu.Unlock()
	for _, c := range conns {
		idx, ok := order[serial(c.Serial)]
		if !ok {
			rep.Problems = append(rep.Problems, fmt.Sprintf("a connection presented serial %s, which was never issued", serial(c.Serial)))
			continue
		}
		for i := idx; i >= 1; i-- {
			if r := &rep.Rotations[i]; !r.Seen || c.At.Sub(r.At) < r.Lag {
				r.Seen, r.Lag = true, c.At.Sub(r.At)
			}
		}
		stale := false
		for i := len(rep.Rotations) - 1; i >= 1; i-- {
			if r := &rep.Rotations[i]; c.Start.Sub(r.At) > cfg.MaxLag {
				r.Judged = true
				stale = stale || idx < i
			}
		}
		if stale {
			rep.StaleConns++
		}
	}
	for _, r := range rep.Rotations[1:] {
		if r.Seen {
			rep.MaxLag = max(rep.MaxLag, r.Lag)
		}
	}
	if rep.StaleConns > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d connections dialed more than %s after a swap presented an older certificate", rep.StaleConns, cfg.MaxLag))
	}
	if rep.Judged() == 0 {
		rep.Problems = append(rep.Problems, "no connection was dialed long enough after a swap to check it: run longer, or reconnect more often")
	}
	if n := out.res.Requests - out.res.OK; n > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d of %d requests failed: %v", n, out.res.Requests, out.res.Errors))
	}
	if out.res.OK == 0 {
		rep.Problems = append(rep.Problems, "no request succeeded")
	}
	return rep, nil
}

// Judged counts the swaps that connections could check.
func (r *RotateReport) Judged() int {
	n := 0
	for _, rot := range r.Rotations[1:] {
		if rot.Judged {
			n++
		}
	}
	return n
}

func serial(s *big.Int) string {
	if s == nil {
		return "<none>"
	}
	return s.String()
}

// maxLoadWait bounds how long Signal waits for the load to flow.
const maxLoadWait = 20 * time.Second

// SignalConfig sends a signal to the server during load.
type SignalConfig struct {
	FaultConfig
	After  time.Duration  // load before the signal, default 2s
	Grace  time.Duration  // the exit must come within this, default 30s
	Signal syscall.Signal // default SIGTERM (SIGKILL: the control that shows drops are caught)
	// Drain, if set, runs the webhook with --shutdown-delay=Drain and has
	// the load leave it the way the API server leaves a terminating
	// replica: once /readyz answers 503 after the signal, no new
	// connection is opened, and the open ones carry reviews until an
	// answer says "Connection: close" (see load.Config.Hold). Then every
	// review sent must be answered, none refused or closed unread, and the
	// server must have asked the clients to go.
	Drain time.Duration
}

// SignalReport is the outcome of a signal run.
type SignalReport struct {
	Result *load.Result `json:"result"`
	// Answered counts the valid responses; NotAccepted the requests the
	// server never read (refused, or closed unread once it stopped
	// accepting); Failures everything else: dropped, invalid or late.
	Answered    int64         `json:"answered"`
	NotAccepted int64         `json:"notAccepted"`
	Failures    int64         `json:"failures"`
	ExitAfter   time.Duration `json:"exitAfterNs"`
	ExitError   string        `json:"exitError,omitempty"`
	RSSAtSignal int64         `json:"rssAtSignalBytes"`
	Problems    []string      `json:"problems,omitempty"`
}

// Signal runs load against a fresh server, signals it after cfg.After,
// keeps the load on until the process has exited, and checks that every
// request the server accepted was answered and that it exited cleanly
// within cfg.Grace.
func Signal(ctx context.Context, e *Env, cfg SignalConfig) (*SignalReport, error) {
	review, err := cfg.defaults()
	if err != nil {
		return nil, err
	}
	if cfg.After == 0 {
		cfg.After = 2 * time.Second
	}
	if cfg.Grace == 0 {
		cfg.Grace = 30 * time.Second
	}
	if cfg.Signal == 0 {
		cfg.Signal = syscall.SIGTERM
	}
	// The load must outlast the signal and the exit; it is cancelled once
	// the process has gone.
	cfg.Duration = max(cfg.Duration, cfg.After+maxLoadWait+cfg.Grace+time.Second)
	if cfg.Drain > 0 {
		if cfg.Target != Webhook {
			return nil, fmt.Errorf("drain: only the webhook has a shutdown delay, not the %s server", cfg.Target)
		}
		cfg.Servers.WebhookArgs = append(slices.Clone(cfg.Servers.WebhookArgs), "--shutdown-delay="+cfg.Drain.String())
	}
	p, err := e.Start(ctx, cfg.Servers, cfg.Target)
	if err != nil {
		return nil, err
	}
	defer p.Kill()

	loadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var res *load.Result
	var loadErr error
	var answered atomic.Int64
	var unready atomic.Bool
	var hold func() bool
	if cfg.Drain > 0 {
		hold = unready.Load
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		res, loadErr = load.Run(loadCtx, load.Config{
			URL: p.URL, RootCAs: e.Roots, Review: review, ExpectPatch: cfg.Target == Webhook,
			Workers: cfg.Workers, Duration: cfg.Duration, Answered: &answered, Hold: hold,
		})
	}()

	// Signal after cfg.After, and not before every worker could have had
	// two answers (for at most maxLoadWait more): the server must be under
	// load, not still handshaking.
	rep := &SignalReport{}
	after, giveUp := time.After(cfg.After), time.After(cfg.After+maxLoadWait)
	for elapsed := false; !elapsed || answered.Load() < 2*int64(cfg.Workers); {
		select {
		case <-after:
			elapsed = true
		case <-giveUp:
			elapsed, cfg.Workers = true, 0
		case <-time.After(10 * time.Millisecond):
		case <-done:
			return nil, fmt.Errorf("load ended before the signal: %v", loadErr)
		}
	}
	if m, err := proc.ReadMemory(p.PID); err == nil {
		rep.RSSAtSignal = m.RSS
	}
	if cfg.Drain > 0 {
		// From just before the signal, so nothing before it can stop the
		// load.
		go followReadiness(loadCtx, p.MetricsURL+"/readyz", p.Done(), &unready)
	}
	exitAfter, exitErr := signalAndWait(p, cfg.Signal, cfg.Grace)
	rep.ExitAfter = exitAfter
	if exitErr != nil {
		rep.ExitError = exitErr.Error()
	}
	// Keep loading a moment past the exit: those requests must be refused,
	// not lost.
	time.Sleep(200 * time.Millisecond)
	cancel()
	<-done
	if loadErr != nil {
		return nil, loadErr
	}
	rep.Result = res
	rep.Answered = res.OK
	for k, v := range res.Errors {
		if load.NotAccepted(k) {
			rep.NotAccepted += v
		}
	}
	rep.Failures = res.Failures()
	if rep.Failures > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d requests failed: %v (first: %v)", rep.Failures, res.Errors, res.Samples))
	}
	if exitErr != nil {
		rep.Problems = append(rep.Problems, exitErr.Error())
	}
	if res.OK == 0 {
		rep.Problems = append(rep.Problems, "no request was answered")
	}
	switch {
	case cfg.Drain > 0 && rep.NotAccepted > 0:
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d requests not accepted although the load followed /readyz: %v", rep.NotAccepted, res.Errors))
	case cfg.Drain > 0 && !unready.Load():
		rep.Problems = append(rep.Problems, "/readyz never failed: the load did not stop before the exit")
	case cfg.Drain > 0 && cfg.Signal == syscall.SIGTERM && res.CloseAnswers == 0:
		rep.Problems = append(rep.Problems, "no answer said \"Connection: close\": the server never asked its clients to go")
	case cfg.Drain == 0 && rep.NotAccepted == 0:
		rep.Problems = append(rep.Problems, "the load did not outlast the server: nothing shows what happened after it exited")
	}
	return rep, nil
}

// followReadiness polls url every few milliseconds and sets unready for
// good once it answers 503, or once the process has exited. A failed poll
// of a live process (a hiccup) is tried again.
func followReadiness(ctx context.Context, url string, exited <-chan struct{}, unready *atomic.Bool) {
	c := &http.Client{Timeout: time.Second}
	for ctx.Err() == nil {
		res, err := c.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusServiceUnavailable {
				unready.Store(true)
				return
			}
		}
		select {
		case <-ctx.Done():
		case <-exited:
			unready.Store(true)
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func signalAndWait(p *target.Process, sig syscall.Signal, grace time.Duration) (time.Duration, error) {
	if sig == syscall.SIGTERM {
		return p.Terminate(grace)
	}
	start := time.Now()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		return 0, err
	}
	select {
	case <-p.Done():
		return time.Since(start), fmt.Errorf("%s exited with %v after %v", p.Spec.Name, p.ExitErr(), sig)
	case <-time.After(grace):
		p.Kill()
		return time.Since(start), fmt.Errorf("%s still running %s after %v: killed", p.Spec.Name, grace, sig)
	}
}

// SoakConfig is a long run at a steady rate.
type SoakConfig struct {
	FaultConfig
	Rate   float64       // total requests per second, default 200
	Sample time.Duration // RSS sampling interval, default Duration/60
}

// RSSSample is the server's resident memory at a moment of the run.
type RSSSample struct {
	At  time.Duration `json:"atNs"`
	RSS int64         `json:"rssBytes"`
}

// SoakReport is the outcome of a soak.
type SoakReport struct {
	Result  *load.Result `json:"result"`
	Samples []RSSSample  `json:"rss"`
	// StartRSS is the highest RSS in the first half of the run after its
	// first tenth (warm-up); EndRSS the highest in the second half. Memory
	// is flat when EndRSS ≤ StartRSS + 10% + 1 MiB: a leak grows with the
	// requests served, and the second half serves as many as the first.
	StartRSS int64    `json:"startRssBytes"`
	EndRSS   int64    `json:"endRssBytes"`
	PeakRSS  int64    `json:"peakRssBytes"`
	Flat     bool     `json:"flat"`
	Problems []string `json:"problems,omitempty"`
}

// Soak runs load at a steady rate and samples the server's RSS.
func Soak(ctx context.Context, e *Env, cfg SoakConfig) (*SoakReport, error) {
	review, err := cfg.defaults()
	if err != nil {
		return nil, err
	}
	if cfg.Rate == 0 {
		cfg.Rate = 200
	}
	if cfg.Sample == 0 {
		cfg.Sample = max(cfg.Duration/60, 100*time.Millisecond)
	}
	p, err := e.Start(ctx, cfg.Servers, cfg.Target)
	if err != nil {
		return nil, err
	}
	defer p.Kill()

	rep := &SoakReport{}
	var res *load.Result
	var loadErr error
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		res, loadErr = load.Run(ctx, load.Config{
			URL: p.URL, RootCAs: e.Roots, Review: review, ExpectPatch: cfg.Target == Webhook,
			Workers: cfg.Workers, Duration: cfg.Duration, Rate: cfg.Rate,
		})
	}()
	tick := time.NewTicker(cfg.Sample)
	defer tick.Stop()
sampling:
	for {
		select {
		case <-done:
			break sampling
		case <-tick.C:
			m, err := proc.ReadMemory(p.PID)
			if err != nil {
				return nil, fmt.Errorf("soak: %w (log: %s)", err, e.LogTail(cfg.Target))
			}
			rep.Samples = append(rep.Samples, RSSSample{At: time.Since(start), RSS: m.RSS})
			rep.PeakRSS = m.Peak
		}
	}
	if loadErr != nil {
		return nil, loadErr
	}
	rep.Result = res
	if _, err := p.Terminate(30 * time.Second); err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}
	half := cfg.Duration / 2
	for _, s := range rep.Samples {
		switch {
		case s.At < cfg.Duration/10:
		case s.At < half:
			rep.StartRSS = max(rep.StartRSS, s.RSS)
		default:
			rep.EndRSS = max(rep.EndRSS, s.RSS)
		}
	}
	rep.Flat = rep.StartRSS > 0 && rep.EndRSS <= rep.StartRSS+rep.StartRSS/10+1<<20
	if rep.StartRSS == 0 || rep.EndRSS == 0 {
		rep.Problems = append(rep.Problems, "too few RSS samples")
	} else if !rep.Flat {
		rep.Problems = append(rep.Problems, fmt.Sprintf("RSS grew from %.1f MiB to %.1f MiB", float64(rep.StartRSS)/(1<<20), float64(rep.EndRSS)/(1<<20)))
	}
	if n := res.Requests - res.OK; n > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d of %d requests failed: %v (first: %v)", n, res.Requests, res.Errors, res.Samples))
	}
	if res.OK == 0 {
		rep.Problems = append(rep.Problems, "no request succeeded")
	}
	return rep, nil
}
