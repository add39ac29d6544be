package scenario

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/podmeta/podmeta/hack/loadtest/corpus"
	"github.com/podmeta/podmeta/hack/loadtest/load"
	"github.com/podmeta/podmeta/hack/loadtest/proc"
	"github.com/podmeta/podmeta/hack/loadtest/target"
)

// BenchConfig is a benchmark of the webhook against the null baseline.
type BenchConfig struct {
	Servers   Servers
	Pods      []string      // corpus sizes
	Workers   []int         // concurrency levels
	Duration  time.Duration // per measurement, warmup included
	Warmup    time.Duration
	Rounds    int  // measurements per target and scenario; the median is reported
	ReadyRuns int  // process starts timed per target
	HTTP2     bool // the workers share one HTTP/2 connection (load.Config.HTTP2)
	Progress  io.Writer
}

// Pair is one scenario measured on both targets, interleaved so that
// machine noise hits both alike.
type Pair struct {
	Pod     string       `json:"pod"`
	Workers int          `json:"workers"`
	Null    *Measurement `json:"null"`
	Webhook *Measurement `json:"webhook"`
}

// Row summarises a scenario over its rounds: the median round of each
// target by the figure in question, and their ratios (webhook / null).
type Row struct {
	Pod             string        `json:"pod"`
	Workers         int           `json:"workers"`
	NullRPS         float64       `json:"nullRps"`
	WebhookRPS      float64       `json:"webhookRps"`
	ThroughputRatio float64       `json:"throughputRatio"` // webhook/null: higher is better
	NullP99         time.Duration `json:"nullP99Ns"`
	WebhookP99      time.Duration `json:"webhookP99Ns"`
	P99Ratio        float64       `json:"p99Ratio"`
	NullCPU         time.Duration `json:"nullCpuPerRequestNs"`
	WebhookCPU      time.Duration `json:"webhookCpuPerRequestNs"`
	CPURatio        float64       `json:"cpuRatio"`
	Failures        int64         `json:"failures"`
	ClientUtil      float64       `json:"maxClientUtil"`
	ServerUtil      float64       `json:"webhookServerUtil"`
}

// BenchReport is the whole benchmark.
type BenchReport struct {
	Machine     Machine                    `json:"machine"`
	Protocol    string                     `json:"protocol"` // HTTP/1.1, or HTTP/2 with BenchConfig.HTTP2
	Config      BenchConfig                `json:"-"`
	Pairs       []Pair                     `json:"runs"`
	Rows        []Row                      `json:"summary"`
	Ready       map[string][]time.Duration `json:"readyNs"`
	ReadyMedian map[string]time.Duration   `json:"readyMedianNs"`
	PeakRSS     map[string]int64           `json:"peakRssBytes"` // by "target/pod"
	// PrivateRSS is RssAnon right after a pod's last round (by
	// "target/pod"): the heap and stacks, without the binary's file pages.
	PrivateRSS   map[string]int64         `json:"privateRssBytes"`
	Shutdown     map[string]time.Duration `json:"shutdownNs"` // slowest idle SIGTERM to exit
	Checks       []Check                  `json:"checks"`
	ServerPinned int                      `json:"serverCpu"`
}

// Check is one of issue 6's targets.
type Check struct {
	Name  string  `json:"name"`
	Value string  `json:"value"`
	Limit string  `json:"limit"`
	OK    bool    `json:"ok"`
	Ratio float64 `json:"-"`
}

// Bench measures start-to-ready for both targets, then every pod × workers
// scenario on both, and returns the figures and their ratios.
func Bench(ctx context.Context, e *Env, cfg BenchConfig) (*BenchReport, error) {
	if cfg.Rounds < 1 {
		cfg.Rounds = 1
	}
	rep := &BenchReport{
		Machine: DescribeMachine(), Config: cfg, ServerPinned: cfg.Servers.CPU, Protocol: "HTTP/1.1",
		Ready: map[string][]time.Duration{}, ReadyMedian: map[string]time.Duration{},
		PeakRSS: map[string]int64{}, PrivateRSS: map[string]int64{}, Shutdown: map[string]time.Duration{},
	}
	if cfg.HTTP2 {
		rep.Protocol = "HTTP/2"
	}
	progress := func(format string, a ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, format+"\n", a...)
		}
	}
	targets := []string{Null, Webhook}

	// Start-to-ready, alternating targets so both see the same page cache.
	for range cfg.ReadyRuns {
		for _, name := range targets {
			p, err := e.Start(ctx, cfg.Servers, name)
			if err != nil {
				return nil, err
			}
			rep.Ready[name] = append(rep.Ready[name], p.Ready)
			if _, err := p.Terminate(30 * time.Second); err != nil {
				return nil, err
			}
		}
	}
	for name, ds := range rep.Ready {
		rep.ReadyMedian[name] = median(ds)
		progress("ready %-7s median %s of %d starts", name, rep.ReadyMedian[name].Round(10*time.Microsecond), len(ds))
	}

	// Fresh processes for each pod size, so each size's peak RSS (VmHWM
	// never goes down) is its own.
	procs := map[string]*target.Process{}
	defer func() { // on early return; the normal path stopped them already
		for _, p := range procs {
			p.Kill()
		}
	}()
	for _, pod := range cfg.Pods {
		review, err := corpus.NewReview(pod)
		if err != nil {
			return nil, err
		}
		for _, name := range targets {
			p, err := e.Start(ctx, cfg.Servers, name)
			if err != nil {
				return nil, err
			}
			procs[name] = p
		}
		for _, workers := range cfg.Workers {
			for round := range cfg.Rounds {
				pair := Pair{Pod: pod, Workers: workers}
				for _, name := range targets {
					m, err := Measure(ctx, name, load.Config{
						URL: procs[name].URL, RootCAs: e.Roots, Review: review, ExpectPatch: name == Webhook,
						Workers: workers, Duration: cfg.Duration, Warmup: cfg.Warmup, HTTP2: cfg.HTTP2,
					}, procs[name].PID)
					if err != nil {
						return nil, err
					}
					if name == Null {
						pair.Null = m
					} else {
						pair.Webhook = m
					}
					progress("%-7s pod=%-6s workers=%-3d round=%d  %8.0f req/s  p99 %-10s cpu/req %-10s srv util %3.0f%%  errors %v",
						name, pod, workers, round+1, m.Throughput, m.Latency.P99.Round(time.Microsecond), m.CPUPerRequest.Round(100*time.Nanosecond), 100*m.ServerUtil, m.Errors)
				}
				rep.Pairs = append(rep.Pairs, pair)
			}
			rep.Rows = append(rep.Rows, summarize(rep.Pairs[len(rep.Pairs)-cfg.Rounds:]))
		}
		for _, name := range targets {
			p := procs[name]
			mem, err := proc.ReadMemory(p.PID)
			if err != nil {
				return nil, err
			}
			rep.PeakRSS[name+"/"+pod] = mem.Peak
			rep.PrivateRSS[name+"/"+pod] = mem.Anon
			took, err := p.Terminate(30 * time.Second)
			if err != nil {
				return nil, fmt.Errorf("%w\n%s", err, e.LogTail(name))
			}
			rep.Shutdown[name] = max(rep.Shutdown[name], took)
			delete(procs, name)
		}
	}
	rep.Checks = checks(rep)
	return rep, nil
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianF(fs []float64) float64 {
	if len(fs) == 0 {
		return 0
	}
	s := slices.Clone(fs)
	slices.Sort(s)
	return s[len(s)/2]
}

// summarize takes the median of each figure over the rounds, and the ratio
// of the medians.
func summarize(pairs []Pair) Row {
	r := Row{Pod: pairs[0].Pod, Workers: pairs[0].Workers}
	var nr, wr, cu []float64
	var np, wp, nc, wc []time.Duration
	for _, p := range pairs {
		nr, wr = append(nr, p.Null.Throughput), append(wr, p.Webhook.Throughput)
		np, wp = append(np, p.Null.Latency.P99), append(wp, p.Webhook.Latency.P99)
		nc, wc = append(nc, p.Null.CPUPerRequest), append(wc, p.Webhook.CPUPerRequest)
		cu = append(cu, max(p.Null.ClientUtil, p.Webhook.ClientUtil))
		r.Failures += p.Null.Failures() + p.Webhook.Failures()
		for k, v := range p.Null.Errors {
			if load.NotAccepted(k) {
				r.Failures += v // no server shuts down during a benchmark
			}
		}
		for k, v := range p.Webhook.Errors {
			if load.NotAccepted(k) {
				r.Failures += v
			}
		}
		r.ServerUtil = max(r.ServerUtil, p.Webhook.ServerUtil)
	}
	r.NullRPS, r.WebhookRPS = medianF(nr), medianF(wr)
	r.NullP99, r.WebhookP99 = median(np), median(wp)
	r.NullCPU, r.WebhookCPU = median(nc), median(wc)
	r.ClientUtil = medianF(cu)
	r.ThroughputRatio = ratio(r.WebhookRPS, r.NullRPS)
	r.P99Ratio = ratio(float64(r.WebhookP99), float64(r.NullP99))
	r.CPURatio = ratio(float64(r.WebhookCPU), float64(r.NullCPU))
	return r
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// Issue 6's targets.
const (
	MaxCPURatio = 2.0
	MaxP99Ratio = 2.0
	MaxRSS      = 25 << 20
	MaxReady    = 100 * time.Millisecond
)

func checks(rep *BenchReport) []Check {
	var out []Check
	row := func(pod string, workers int) *Row {
		for i := range rep.Rows {
			if rep.Rows[i].Pod == pod && rep.Rows[i].Workers == workers {
				return &rep.Rows[i]
			}
		}
		return nil
	}
	if r := row("medium", 64); r != nil {
		out = append(out,
			Check{Name: "CPU per review, medium pod, 64 workers (× null)", Value: fmt.Sprintf("%.2f×", r.CPURatio), Limit: fmt.Sprintf("≤ %.0f×", MaxCPURatio), OK: r.CPURatio <= MaxCPURatio, Ratio: r.CPURatio},
			Check{Name: "p99 latency, medium pod, 64 workers (× null)", Value: fmt.Sprintf("%.2f×", r.P99Ratio), Limit: fmt.Sprintf("≤ %.0f×", MaxP99Ratio), OK: r.P99Ratio <= MaxP99Ratio, Ratio: r.P99Ratio},
		)
	}
	for _, pod := range rep.Config.Pods {
		if rss, ok := rep.PeakRSS[Webhook+"/"+pod]; ok {
			out = append(out, Check{Name: "webhook peak RSS under load, " + pod + " pod", Value: fmt.Sprintf("%.1f MiB", float64(rss)/(1<<20)), Limit: "≤ 25 MiB", OK: rss <= MaxRSS})
		}
	}
	if d, ok := rep.ReadyMedian[Webhook]; ok {
		out = append(out, Check{Name: "webhook start to ready (median)", Value: d.Round(100 * time.Microsecond).String(), Limit: "≤ 100ms", OK: d <= MaxReady})
	}
	var fails int64
	for _, r := range rep.Rows {
		fails += r.Failures
	}
	out = append(out, Check{Name: "failed or invalid responses", Value: fmt.Sprint(fails), Limit: "0", OK: fails == 0})
	return out
}
