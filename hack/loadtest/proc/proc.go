// Package proc reads a process's CPU time and memory from Linux /proc, the
// way the load tool measures the server it loads without touching it.
package proc

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// ClockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports (the kernel ABI fixes it; the
// kernel's internal HZ may differ), and reading it needs sysconf via cgo.
const ClockTicks = 100

// CPUTime returns the user+system CPU time the process has used so far,
// with 1/ClockTicks resolution (10 ms): measure over runs of seconds.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu time: %w", err)
	}
	return parseStat(b)
}

func parseStat(b []byte) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may itself contain
	// spaces and parentheses: fields are counted from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc stat: no command name")
	}
	f := bytes.Fields(b[i+1:])
	// After the name: state is field 3, utime 14, stime 15 (1-based).
	const utime, stime = 14 - 3, 15 - 3
	if len(f) <= stime {
		return 0, fmt.Errorf("parse /proc stat: %d fields after the command name, want > %d", len(f), stime)
	}
	u, err := strconv.ParseUint(string(f[utime]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc stat utime: %w", err)
	}
	s, err := strconv.ParseUint(string(f[stime]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc stat stime: %w", err)
	}
	return time.Duration(u+s) * time.Second / ClockTicks, nil
}

// Memory is a process's resident set, in bytes.
type Memory struct {
	RSS  int64 // VmRSS: resident now
	Peak int64 // VmHWM: the highest RSS since the process started
	// Anon is RssAnon: the private part of RSS now (heap, stacks); the rest
	// is mostly the binary's clean, shared, reclaimable file pages.
	Anon int64
}

// ReadMemory reads VmRSS, VmHWM and RssAnon from /proc/PID/status.
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, fmt.Errorf("read memory: %w", err)
	}
	return parseStatus(b)
}

func parseStatus(b []byte) (Memory, error) {
	var m Memory
	var seen int
	for line := range bytes.Lines(b) {
		var dst *int64
		switch {
		case bytes.HasPrefix(line, []byte("VmRSS:")):
			dst = &m.RSS
		case bytes.HasPrefix(line, []byte("VmHWM:")):
			dst = &m.Peak
		case bytes.HasPrefix(line, []byte("RssAnon:")):
			dst = &m.Anon
		default:
			continue
		}
		f := bytes.Fields(line)
		if len(f) != 3 || string(f[2]) != "kB" {
			return Memory{}, fmt.Errorf("parse /proc status: unexpected line %q", bytes.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(string(f[1]), 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("parse /proc status %s: %w", f[0], err)
		}
		*dst = kb << 10
		if dst != &m.Anon {
			seen++
		}
	}
	if seen != 2 {
		return Memory{}, fmt.Errorf("parse /proc status: VmRSS or VmHWM missing (a kernel thread or a zombie?)")
	}
	return m, nil
}
