// Command ambassador-bench measures what podmeta-ambassador adds on top of
// calling the API server directly, and compares it with `kubectl proxy` and
// with a byte relay (the floor of any proxy process, see relay.go) on the
// same upstream in the same run.
//
// Everything runs on loopback: an in-process TLS HTTP/2 API-server stand-in
// serves a ~21 KB JSON list; the ambassador (and kubectl proxy, when a
// kubectl binary is found) run as child processes so their CPU time and RSS
// can be read from /proc. Each target gets the same rounds in interleaved
// order, so machine noise hits them alike; results are reported as ratios
// against the direct baseline of the same run.
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == relayCommand {
		if err := relayMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "ambassador-bench relay:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ambassador-bench:", err)
		os.Exit(1)
	}
}

const (
	listPath  = "/api/v1/namespaces/default/pods"
	relayName = "byte relay (floor of any proxy process)"
)

type options struct {
	ambassador string // binary; built from ./cmd/ambassador when empty
	kubectl    string
	serial     int           // requests per round at 1 client
	duration   time.Duration // per round at `clients` clients
	clients    int
	rounds     int
	ambEnv     string // extra KEY=VALUE,... for the ambassador process
	syscalls   bool
	relay      bool
}

func run() error {
	var o options
	flag.StringVar(&o.ambassador, "ambassador", "", "podmeta-ambassador binary (default: build ./cmd/ambassador)")
	flag.StringVar(&o.kubectl, "kubectl", "kubectl", "kubectl binary for the kubectl proxy comparison; empty to skip")
	flag.IntVar(&o.serial, "serial", 2000, "requests per round with one client (latency)")
	flag.DurationVar(&o.duration, "duration", 2*time.Second, "length of each concurrent round (throughput)")
	flag.IntVar(&o.clients, "clients", 16, "concurrent clients in the throughput rounds")
	flag.IntVar(&o.rounds, "rounds", 7, "interleaved rounds per target")
	flag.StringVar(&o.ambEnv, "ambassador-env", "", "extra environment for the ambassador, KEY=VALUE,...; several variants separated by ; each get their own process (e.g. \"GOGC=100;GOGC=50\")")
	flag.BoolVar(&o.relay, "relay", true, "also measure a byte relay process between the client and the API server: the floor of any proxy in its own process on this machine")
	flag.BoolVar(&o.syscalls, "syscalls", true, "count each proxy's system calls per request with strace -c (skipped without strace)")
	flag.Parse()

	dir, err := os.MkdirTemp("", "ambassador-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	body := podList(21 * 1024)
	const token = "bench-token"
	api, caPEM, err := startAPIServer(body, token)
	if err != nil {
		return err
	}
	defer api.Close()
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		return err
	}

	bin := o.ambassador
	if bin == "" {
		bin = filepath.Join(dir, "podmeta-ambassador")
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/ambassador")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.Stderr = os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build ambassador (run from the repository root): %w", err)
		}
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	targets := []*target{{
		name: "direct (HTTPS, HTTP/2)",
		url:  api.URL + listPath,
		client: &http.Client{Transport: &http.Transport{
			TLSClientConfig:    &tls.Config{RootCAs: pool},
			ForceAttemptHTTP2:  true,
			DisableCompression: true,
		}},
		header: http.Header{"Authorization": {"Bearer " + token}},
	}}

	// One ambassador per variant, so settings can be compared in one run.
	variants := []string{""}
	if o.ambEnv != "" {
		variants = strings.Split(o.ambEnv, ";")
	}
	for _, v := range variants {
		ambPort, healthPort := freePort(), freePort()
		amb := exec.Command(bin, "--listen=127.0.0.1:"+ambPort, "--health-listen=127.0.0.1:"+healthPort,
			"--upstream="+api.URL, "--token-file="+tokenFile, "--ca-file="+caFile, "--log-level=warn")
		amb.Stderr = os.Stderr
		name := "podmeta-ambassador"
		if v != "" {
			amb.Env = append(os.Environ(), strings.Split(v, ",")...)
			name += " (" + v + ")"
		}
		if err := amb.Start(); err != nil {
			return err
		}
		defer stop(amb)
		targets = append(targets, &target{name: name, url: "http://127.0.0.1:" + ambPort + listPath, client: plainClient(o.clients), pid: amb.Process.Pid})
	}

	if o.relay {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		rport := freePort()
		rc := exec.Command(self, relayCommand, "127.0.0.1:"+rport, strings.TrimPrefix(api.URL, "https://"))
		// One CPU's worth of threads, like the ambassador's default.
		rc.Env = append(os.Environ(), "GOMAXPROCS=1")
		rc.Stderr = os.Stderr
		if err := rc.Start(); err != nil {
			return err
		}
		defer stop(rc)
		// The direct client's TLS and HTTP/2 pass through unchanged (the
		// certificate names 127.0.0.1), so only the hop differs.
		targets = append(targets, &target{name: relayName, url: "https://127.0.0.1:" + rport + listPath, pid: rc.Process.Pid,
			client: targets[0].client, header: targets[0].header})
	}

	if o.kubectl != "" {
		if path, err := exec.LookPath(o.kubectl); err == nil {
			kc := filepath.Join(dir, "kubeconfig")
			if err := os.WriteFile(kc, kubeconfig(api.URL, caPEM, token), 0o600); err != nil {
				return err
			}
			kport := freePort()
			kp := exec.Command(path, "proxy", "--kubeconfig="+kc, "--port="+kport, "--address=127.0.0.1")
			kp.Stderr = os.Stderr
			if err := kp.Start(); err != nil {
				return err
			}
			defer stop(kp)
			targets = append(targets, &target{name: "kubectl proxy", url: "http://127.0.0.1:" + kport + listPath, client: plainClient(o.clients), pid: kp.Process.Pid})
		} else {
			fmt.Fprintf(os.Stderr, "no %s binary: skipping the kubectl proxy comparison\n", o.kubectl)
		}
	}

	for _, t := range targets {
		if err := t.waitReady(len(body)); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		// Warm up connections, TLS sessions and the proxies' heaps.
		t.serial(200)
		t.concurrent(o.clients, 500*time.Millisecond)
	}

	for r := 0; r < o.rounds; r++ {
		order := rotate(targets, r)
		for _, t := range order {
			t.measureSerial(o.serial)
		}
		for _, t := range order {
			t.measureConcurrent(o.clients, o.duration)
		}
	}
	if o.syscalls {
		if strace, err := exec.LookPath("strace"); err == nil {
			for _, t := range targets[1:] {
				if err := t.countSyscalls(strace, o.clients); err != nil {
					fmt.Fprintf(os.Stderr, "%s: strace: %v\n", t.name, err)
				}
			}
		}
	}
	report(os.Stdout, targets, o, len(body))
	return nil
}

// target is one way of reaching the API server, with its measurements.
type target struct {
	name   string
	url    string
	client *http.Client
	header http.Header
	pid    int // proxy process, 0 for direct

	medians, p99s  []time.Duration // per serial round
	rps            []float64       // per concurrent round
	cpuPerReq      []time.Duration // proxy CPU per request, per concurrent round
	syscallsPerReq float64         // from strace -c, 0 if not measured
	rssKiB         int64           // max VmRSS seen
	hwmKiB         int64
	anonKiB        int64 // max RssAnon seen: private memory, without the binary's file pages
}

func (t *target) get() error {
	req, _ := http.NewRequest("GET", t.url, nil)
	for k, v := range t.header {
		req.Header[k] = v
	}
	res, err := t.client.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if err == nil && res.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", res.StatusCode)
	}
	return err
}

func (t *target) waitReady(size int) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := t.get()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (t *target) serial(n int) []time.Duration {
	lat := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if err := t.get(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", t.name, err)
			continue
		}
		lat = append(lat, time.Since(start))
	}
	return lat
}

func (t *target) measureSerial(n int) {
	lat := t.serial(n)
	slices.Sort(lat)
	if len(lat) == 0 {
		return
	}
	t.medians = append(t.medians, lat[len(lat)/2])
	t.p99s = append(t.p99s, lat[len(lat)*99/100])
	t.sampleMemory()
}

// concurrent runs `clients` loops for d and returns completed requests.
func (t *target) concurrent(clients int, d time.Duration) int64 {
	var n, errs atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for time.Now().Before(stop) {
				if err := t.get(); err != nil {
					errs.Add(1)
					continue
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if e := errs.Load(); e > 0 {
		fmt.Fprintf(os.Stderr, "%s: %d errors\n", t.name, e)
	}
	return n.Load()
}

func (t *target) measureConcurrent(clients int, d time.Duration) {
	cpu0 := procCPU(t.pid)
	start := time.Now()
	n := t.concurrent(clients, d)
	elapsed := time.Since(start)
	cpu1 := procCPU(t.pid)
	t.rps = append(t.rps, float64(n)/elapsed.Seconds())
	if t.pid != 0 && n > 0 {
		t.cpuPerReq = append(t.cpuPerReq, (cpu1-cpu0)/time.Duration(n))
	}
	t.sampleMemory()
}

func (t *target) sampleMemory() {
	if t.pid == 0 {
		return
	}
	rss, hwm, anon := procMem(t.pid)
	t.rssKiB = max(t.rssKiB, rss)
	t.hwmKiB = max(t.hwmKiB, hwm)
	t.anonKiB = max(t.anonKiB, anon)
}

// countSyscalls attaches strace -c to the proxy for a throughput round.
// System calls dominate a proxy's CPU profile and, unlike CPU time on a
// shared machine, their count per request does not depend on the noise.
func (t *target) countSyscalls(strace string, clients int) error {
	out := filepath.Join(os.TempDir(), fmt.Sprintf("ambassador-bench-strace-%d", t.pid))
	defer os.Remove(out)
	cmd := exec.Command(strace, "-f", "-c", "-o", out, "-p", strconv.Itoa(t.pid))
	if err := cmd.Start(); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond) // attach to every thread
	n := t.concurrent(clients, 2*time.Second)
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait() // strace reports the interrupt as its exit status
	b, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	var calls int64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// "% time seconds usecs/call calls [errors] syscall"
		if len(f) < 5 || f[len(f)-1] == "total" {
			continue
		}
		if _, err := strconv.ParseFloat(f[0], 64); err != nil {
			continue
		}
		c, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			continue
		}
		calls += c
	}
	if n > 0 {
		t.syscallsPerReq = float64(calls) / float64(n)
	}
	return nil
}

// procCPU is the user+system CPU time of pid (0: none).
func procCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line, in clock ticks (100 Hz on Linux).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// procMem returns VmRSS, VmHWM (peak RSS) and RssAnon of pid in KiB.
func procMem(pid int) (rss, hwm, anon int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		case "RssAnon:":
			anon = v
		}
	}
	return rss, hwm, anon
}

func median[T int64 | float64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func report(w io.Writer, ts []*target, o options, size int) {
	base := ts[0]
	fmt.Fprintf(w, "payload %d bytes, %d rounds; latency: %d serial requests/round; throughput: %d clients x %s/round; "+
		"medians over rounds, differences and ratios taken per round against the direct baseline of the same round\n\n",
		size, o.rounds, o.serial, o.clients, o.duration)
	fmt.Fprintf(w, "| target | median latency | added median | p99 latency | req/s at %d clients | throughput vs direct | proxy CPU per request | proxy syscalls per request | RSS (peak) | private RSS (RssAnon) |\n", o.clients)
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, t := range ts {
		m, r := median(t.medians), median(t.rps)
		added, ratio, cpu, sys, rss, anon := "—", "1.00", "—", "—", "—", "—"
		if t != base {
			added = fmt.Sprintf("%+.3f ms", ms(addedLatency(t, base)))
			q := throughputRatio(t, base)
			ratio = fmt.Sprintf("%.2f (%+.1f %%)", q, (q-1)*100)
			cpu = fmt.Sprintf("%.3f ms", ms(median(t.cpuPerReq)))
			rss = fmt.Sprintf("%.1f MiB (%.1f MiB)", float64(t.rssKiB)/1024, float64(t.hwmKiB)/1024)
			anon = fmt.Sprintf("%.1f MiB", float64(t.anonKiB)/1024)
			if t.syscallsPerReq > 0 {
				sys = fmt.Sprintf("%.1f", t.syscallsPerReq)
			}
		}
		fmt.Fprintf(w, "| %s | %.3f ms | %s | %.3f ms | %.0f | %s | %s | %s | %s | %s |\n", t.name, ms(m), added, ms(median(t.p99s)), r, ratio, cpu, sys, rss, anon)
	}
	var amb, kp, rl *target
	for _, t := range ts {
		switch {
		case amb == nil && strings.HasPrefix(t.name, "podmeta-ambassador"):
			amb = t
		case t.name == "kubectl proxy":
			kp = t
		case t.name == relayName:
			rl = t
		}
	}
	if amb != nil && rl != nil {
		fmt.Fprintf(w, "\nambassador vs byte relay: added median latency %+.3f ms vs %+.3f ms (%.2f), throughput vs direct %.2f vs %.2f\n",
			ms(addedLatency(amb, base)), ms(addedLatency(rl, base)), ms(addedLatency(amb, base))/ms(addedLatency(rl, base)),
			throughputRatio(amb, base), throughputRatio(rl, base))
	}
	if amb != nil && kp != nil {
		fmt.Fprintf(w, "\nambassador / kubectl proxy: added median latency %.2f, CPU per request %.2f, peak RSS %.2f",
			ms(addedLatency(amb, base))/ms(addedLatency(kp, base)),
			ms(median(amb.cpuPerReq))/ms(median(kp.cpuPerReq)),
			float64(amb.hwmKiB)/float64(kp.hwmKiB))
		if amb.syscallsPerReq > 0 && kp.syscallsPerReq > 0 {
			fmt.Fprintf(w, ", syscalls per request %.2f", amb.syscallsPerReq/kp.syscallsPerReq)
		}
		fmt.Fprintln(w)
	}
}

// addedLatency is the median over rounds of t's median latency minus the
// baseline's in the same round: machine noise that drifts between rounds
// cancels out.
func addedLatency(t, base *target) time.Duration {
	var d []time.Duration
	for i := range min(len(t.medians), len(base.medians)) {
		d = append(d, t.medians[i]-base.medians[i])
	}
	return median(d)
}

// throughputRatio is the median over rounds of t's req/s divided by the
// baseline's in the same round.
func throughputRatio(t, base *target) float64 {
	var q []float64
	for i := range min(len(t.rps), len(base.rps)) {
		q = append(q, t.rps[i]/base.rps[i])
	}
	return median(q)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func rotate(ts []*target, r int) []*target {
	out := make([]*target, len(ts))
	for i := range ts {
		out[i] = ts[(i+r)%len(ts)]
	}
	return out
}

func plainClient(clients int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: clients * 2,
		DisableCompression:  true,
	}}
}

func stop(c *exec.Cmd) {
	_ = c.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = c.Process.Kill()
		<-done
	}
}

func freePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// podList is a PodList-shaped JSON document of about size bytes.
func podList(size int) []byte {
	type pod struct {
		Metadata map[string]any `json:"metadata"`
		Spec     map[string]any `json:"spec"`
		Status   map[string]any `json:"status"`
	}
	list := map[string]any{"kind": "PodList", "apiVersion": "v1", "metadata": map[string]any{"resourceVersion": "12345"}}
	var items []pod
	for i := 0; ; i++ {
		items = append(items, pod{
			Metadata: map[string]any{"name": fmt.Sprintf("web-%05d", i), "namespace": "default", "uid": fmt.Sprintf("8c6f2a6e-0000-4000-8000-%012d", i),
				"labels": map[string]string{"app": "web", "podmeta.io/inject": "true"}, "resourceVersion": strconv.Itoa(1000 + i)},
			Spec: map[string]any{"nodeName": "node-1", "serviceAccountName": "default",
				"containers": []map[string]any{{"name": "app", "image": "registry.example/web:1.2.3", "resources": map[string]any{"requests": map[string]string{"cpu": "100m", "memory": "128Mi"}}}}},
			Status: map[string]any{"phase": "Running", "podIP": fmt.Sprintf("10.0.%d.%d", i/250, i%250), "hostIP": "192.168.1.10"},
		})
		list["items"] = items
		b, _ := json.Marshal(list)
		if len(b) >= size {
			return b
		}
	}
}

func startAPIServer(body []byte, token string) (*httptest.Server, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench apiserver"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	want := "Bearer " + token
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != want {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		// Like kube-apiserver, one Write of the encoded list and no
		// Content-Length: proxies see a body of unknown length.
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	s.EnableHTTP2 = true
	s.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	s.StartTLS()
	return s, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func kubeconfig(server string, caPEM []byte, token string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: bench
  user:
    token: %s
contexts:
- name: bench
  context: {cluster: bench, user: bench}
current-context: bench
`, server, base64.StdEncoding.EncodeToString(caPEM), token)
}
