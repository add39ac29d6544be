//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/e2e/framework"
	"github.com/podmeta/podmeta/mutate"
)

// latencySamples is the number of measured creates per variant (after warm-up).
const latencySamples = 60

// TestPodCreateLatency measures what podmeta adds to a pod create through
// the API server: sequential creates of an opted-in pod (the API server calls
// the webhook through its Service) interleaved with creates of the same pod
// without the label (objectSelector: no call), medians of each, in the same
// run. The pods are bound to a node that does not exist, so no kubelet work
// disturbs the measurement. With PODMETA_BENCH_FILE set, the result replaces
// the section "Pod creation through the API server" in that file
// (`make e2e-bench` writes BENCHMARKS.md).
func TestPodCreateLatency(t *testing.T) {
	c := framework.Connect(t)
	pm := c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-latency")
	pods := c.Client.CoreV1().Pods(ns)
	// No kubelet confirms the deletion of pods bound to a missing node.
	t.Cleanup(func() {
		zero := int64(0)
		_ = pods.DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
	})

	mk := func(i int, labeled bool) *corev1.Pod {
		p := injectedPod(fmt.Sprintf("plain-%d", i), nil)
		if labeled {
			p.Name = fmt.Sprintf("injected-%d", i)
		} else {
			delete(p.Labels, mutate.LabelInject)
		}
		p.Spec.NodeName = "e2e-no-such-node"
		return p
	}
	const warmup = 5
	var with, without []time.Duration
	for i := 0; i < warmup+latencySamples; i++ {
		// Alternate which variant goes first so drift hits both alike.
		order := []bool{i%2 == 0, i%2 != 0}
		for _, labeled := range order {
			p := mk(i, labeled)
			start := time.Now()
			got, err := pods.Create(ctx, p, metav1.CreateOptions{})
			d := time.Since(start)
			require.NoError(t, err, "create %s", p.Name)
			_, injected := got.Annotations[mutate.AnnotationStatus]
			require.Equal(t, labeled, injected, "pod %s: injected only with the label", p.Name)
			if i < warmup {
				continue
			}
			if labeled {
				with = append(with, d)
			} else {
				without = append(without, d)
			}
		}
	}
	mw, mo := median(with), median(without)
	pw, po := percentile(with, 90), percentile(without, 90)
	t.Logf("pod create, median of %d: without podmeta %v, with podmeta %v (ratio %.2f); p90 %v vs %v", latencySamples, mo, mw, float64(mw)/float64(mo), po, pw)

	file := os.Getenv("PODMETA_BENCH_FILE")
	if file == "" {
		return
	}
	version, _ := c.Client.Discovery().ServerVersion()
	d, err := c.Deployment(ctx, pm)
	require.NoError(t, err)
	section := fmt.Sprintf(`## Pod creation through the API server

What podmeta adds to creating a pod, measured end to end through a real API
server: %d sequential creates of an opted-in pod (the API server calls the
webhook through its Service over TLS) interleaved with %d creates of the same
pod without the label (the webhook's objectSelector: no call), after %d
warm-up creates of each, in the same run. The pods are bound to a node that
does not exist, so no kubelet work disturbs the measurement.

| | median | p90 |
|---|---|---|
| without podmeta | %s | %s |
| with podmeta | %s | %s |
| **ratio with/without** | **%.2f** | %.2f |

- Command: `+"`make e2e-bench`"+` (TestPodCreateLatency in `+"`e2e/`"+`, run on the local cluster)
- Cluster: Kubernetes %s, one node (hack/cluster), podmeta %d replicas
- Machine: %s, %d CPUs, Linux %s, %s
- Date: %s
`, latencySamples, latencySamples, warmup, ms(mo), ms(po), ms(mw), ms(pw), float64(mw)/float64(mo), float64(pw)/float64(po),
		versionString(version), d.Status.ReadyReplicas, cpuModel(), runtime.NumCPU(), kernel(), runtime.Version(), time.Now().UTC().Format("2006-01-02 15:04 MST"))
	require.NoError(t, replaceSection(file, "## Pod creation through the API server", section))
	t.Logf("wrote the result to %s", file)
}

func median(ds []time.Duration) time.Duration { return percentile(ds, 50) }

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func versionString(v interface{ String() string }) string {
	if v == nil {
		return "?"
	}
	return v.String()
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}
