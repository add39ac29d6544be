package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/podmeta/podmeta/hack/loadtest/scenario"
)

func us(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
	return d.Round(time.Millisecond).String()
}

func mib(b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

func errs(m map[string]int64) string {
	if len(m) == 0 {
		return "0"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s=%d", k, m[k])
	}
	return b.String()
}

func printMeasurements(w io.Writer, ms ...*scenario.Measurement) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\tpod\tworkers\trequests\treq/s\tp50\tp90\tp99\tp99.9\tmax\tcpu/req\tsrv util\tgen util\tpeak RSS\terrors\t")
	for _, m := range ms {
		l := m.Latency
		util := "-"
		if m.ServerUtil > 0 {
			util = fmt.Sprintf("%.0f%%", 100*m.ServerUtil)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f%%\t%s\t%s\t\n",
			m.Target, m.Pod, m.Workers, m.Requests, m.Throughput, us(l.P50), us(l.P90), us(l.P99), us(l.P999), us(l.Max),
			us(m.CPUPerRequest), util, 100*m.ClientUtil, mib(m.PeakRSS), errs(m.Errors))
	}
	tw.Flush()
	for _, m := range ms {
		for k, v := range m.Samples {
			fmt.Fprintf(w, "  %s %s: first %s error: %s\n", m.Target, m.Pod, k, v)
		}
	}
}

func printBench(w io.Writer, rep *scenario.BenchReport) {
	m := rep.Machine
	proto := "HTTP/1.1, a keep-alive connection per worker"
	if rep.Protocol == "HTTP/2" {
		proto = "HTTP/2, the workers' reviews as streams of one connection"
	}
	fmt.Fprintf(w, "machine: %s, Linux %s, %s; servers on CPU %d, generator on CPUs %s; load average at start %s\n%s\n\n",
		m.CPU, m.Kernel, m.GoVersion, rep.ServerPinned, m.Affinity, m.LoadAvg, proto)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "pod\tworkers\tnull req/s\twebhook req/s\tratio\tnull p99\twebhook p99\tratio\tnull cpu/req\twebhook cpu/req\tratio\tgen util\tfailures\t")
	for _, r := range rep.Rows {
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%.2f\t%s\t%s\t%.2f\t%s\t%s\t%.2f\t%.0f%%\t%d\t\n",
			r.Pod, r.Workers, r.NullRPS, r.WebhookRPS, r.ThroughputRatio, us(r.NullP99), us(r.WebhookP99), r.P99Ratio,
			us(r.NullCPU), us(r.WebhookCPU), r.CPURatio, 100*r.ClientUtil, r.Failures)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tnull\twebhook\tratio\t")
	fmt.Fprintf(tw, "start to ready (median)\t%s\t%s\t%.2f\t\n", us(rep.ReadyMedian[scenario.Null]), us(rep.ReadyMedian[scenario.Webhook]),
		float64(rep.ReadyMedian[scenario.Webhook])/float64(max(rep.ReadyMedian[scenario.Null], 1)))
	for _, pod := range rep.Config.Pods {
		n, w := rep.PeakRSS[scenario.Null+"/"+pod], rep.PeakRSS[scenario.Webhook+"/"+pod]
		fmt.Fprintf(tw, "peak RSS (VmHWM), %s pod\t%s\t%s\t%.2f\t\n", pod, mib(n), mib(w), float64(w)/float64(max(n, 1)))
	}
	for _, pod := range rep.Config.Pods {
		n, w := rep.PrivateRSS[scenario.Null+"/"+pod], rep.PrivateRSS[scenario.Webhook+"/"+pod]
		fmt.Fprintf(tw, "private RSS (RssAnon) after, %s pod\t%s\t%s\t%.2f\t\n", pod, mib(n), mib(w), float64(w)/float64(max(n, 1)))
	}
	fmt.Fprintf(tw, "SIGTERM to exit, idle\t%s\t%s\t\t\n", us(rep.Shutdown[scenario.Null]), us(rep.Shutdown[scenario.Webhook]))
	tw.Flush()
	fmt.Fprintln(w)
	printChecks(w, rep.Checks)
}

func printChecks(w io.Writer, cs []scenario.Check) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range cs {
		mark := "ok  "
		if !c.OK {
			mark = "MISS"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t(target %s)\n", mark, c.Name, c.Value, c.Limit)
	}
	tw.Flush()
}
