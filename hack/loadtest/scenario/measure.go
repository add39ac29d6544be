// Package scenario runs the load tool's scenarios against started server
// processes: the benchmark against the null baseline, certificate rotation
// under load, SIGTERM under load, and the soak. The command and the tests
// share it, so what CI checks is what the published figures come from.
package scenario

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/podmeta/podmeta/hack/loadtest/load"
	"github.com/podmeta/podmeta/hack/loadtest/proc"
)

// Measurement is one load run plus what it cost the server.
type Measurement struct {
	Target  string `json:"target"`
	Pod     string `json:"pod"`
	Workers int    `json:"workers"`
	*load.Result
	// ServerCPU is the server's CPU time in the measured window; with
	// Requests it gives CPUPerRequest. ServerUtil and ClientUtil are CPU
	// time over wall time: a client near 1.0 with a server well below it
	// means the run measured the generator, not the server.
	ServerCPU     time.Duration `json:"serverCpuNs,omitempty"`
	CPUPerRequest time.Duration `json:"cpuPerRequestNs,omitempty"`
	ServerUtil    float64       `json:"serverUtil,omitempty"`
	ClientUtil    float64       `json:"clientUtil"`
	PeakRSS       int64         `json:"peakRssBytes,omitempty"` // VmHWM after the run
}

// Measure runs cfg and, when pid > 0, reads the server's CPU time at the
// edges of the measured window and its peak RSS afterwards.
func Measure(ctx context.Context, name string, cfg load.Config, pid int) (*Measurement, error) {
	var mu sync.Mutex
	var srvStart, srvEnd, cliStart, cliEnd time.Duration
	var srvErr error
	self := os.Getpid()
	user := cfg.OnMeasure
	cfg.OnMeasure = func(start bool) {
		mu.Lock()
		defer mu.Unlock()
		c, _ := proc.CPUTime(self)
		var s time.Duration
		if pid > 0 {
			var err error
			s, err = proc.CPUTime(pid)
			if err != nil && srvErr == nil {
				srvErr = err
			}
		}
		if start {
			srvStart, cliStart = s, c
		} else {
			srvEnd, cliEnd = s, c
		}
		if user != nil {
			user(start)
		}
	}
	res, err := load.Run(ctx, cfg)
	if err != nil {
		return nil, err
	}
	m := &Measurement{Target: name, Pod: cfg.Review.Size, Workers: cfg.Workers, Result: res}
	if sec := res.Elapsed.Seconds(); sec > 0 {
		m.ClientUtil = (cliEnd - cliStart).Seconds() / sec
	}
	if pid <= 0 {
		return m, nil
	}
	if srvErr != nil {
		return nil, fmt.Errorf("measure %s: %w", name, srvErr)
	}
	m.ServerCPU = srvEnd - srvStart
	if res.Requests > 0 {
		m.CPUPerRequest = m.ServerCPU / time.Duration(res.Requests)
	}
	if sec := res.Elapsed.Seconds(); sec > 0 {
		m.ServerUtil = m.ServerCPU.Seconds() / sec
	}
	mem, err := proc.ReadMemory(pid)
	if err != nil {
		return nil, fmt.Errorf("measure %s: %w", name, err)
	}
	m.PeakRSS = mem.Peak
	return m, nil
}
