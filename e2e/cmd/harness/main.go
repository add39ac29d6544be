// Command harness is the Go half of the local cluster harness
// (hack/cluster/*.sh): it generates the cluster's PKI and builds the container
// images, and makes sure cert-manager runs in the cluster (hack/e2e/deploy.sh),
// the jobs that are easier and safer in Go than in shell.
//
//	harness pki         -dir DIR -node-name N -node-ip IP -service-ip IP -internal-url U -external-url U [-extra-ip IP]...
//	harness images      -repo-root DIR -out DIR [-registry R] [-tag T] [NAME...]
//	harness certmanager -repo-root DIR -image REF [-install=false] [-timeout D]   (cluster: KUBECONFIG)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/podmeta/podmeta/e2e/certmanager"
	"github.com/podmeta/podmeta/e2e/internal/imagebuild"
	"github.com/podmeta/podmeta/e2e/internal/pki"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, os.Stdout, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
}

// Images are the images the harness knows by name: package path relative to
// the repository root and the binary name inside the image.
var Images = map[string]imagebuild.Spec{
	"pause":       {Name: "pause", Package: "./e2e/images/pause"},
	"testapp":     {Name: "testapp", Package: "./e2e/images/testapp"},
	"webhook":     {Name: "webhook", Package: "./cmd/webhook", Binary: "podmeta-webhook"},
	"ambassador":  {Name: "ambassador", Package: "./cmd/ambassador", Binary: "podmeta-ambassador"},
	"certmanager": {Name: "certmanager", Package: "./hack/certmanager", Binary: "podmeta-certmanager"},
}

// Run is the whole command, testable without a process.
func Run(ctx context.Context, stdout io.Writer, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: harness pki|images|certmanager [flags]")
	}
	switch args[0] {
	case "pki":
		return runPKI(args[1:])
	case "images":
		return runImages(ctx, stdout, args[1:])
	case "certmanager":
		return runCertManager(ctx, stdout, args[1:])
	default:
		return fmt.Errorf("unknown subcommand %q (want pki, images or certmanager)", args[0])
	}
}

type ipList []net.IP

func (l *ipList) String() string { return fmt.Sprint(*l) }
func (l *ipList) Set(s string) error {
	ip := net.ParseIP(s)
	if ip == nil {
		return fmt.Errorf("not an IP address: %q", s)
	}
	*l = append(*l, ip)
	return nil
}

func runPKI(args []string) error {
	fs := flag.NewFlagSet("pki", flag.ContinueOnError)
	var o pki.Options
	var nodeIP, serviceIP string
	var extra ipList
	fs.StringVar(&o.Dir, "dir", "", "output directory")
	fs.StringVar(&o.ClusterName, "cluster-name", "podmeta", "cluster name in kubeconfigs")
	fs.StringVar(&o.NodeName, "node-name", "", "node name")
	fs.StringVar(&nodeIP, "node-ip", "", "node IP (cluster bridge address)")
	fs.StringVar(&serviceIP, "service-ip", "10.96.0.1", "first Service IP")
	fs.Var(&extra, "extra-ip", "more apiserver addresses (repeatable)")
	fs.StringVar(&o.InternalURL, "internal-url", "", "apiserver URL for node components")
	fs.StringVar(&o.ExternalURL, "external-url", "", "apiserver URL for admin.kubeconfig")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.Dir == "" {
		return errors.New("pki: -dir is required")
	}
	if o.NodeIP = net.ParseIP(nodeIP); o.NodeIP == nil {
		return fmt.Errorf("pki: -node-ip: not an IP address: %q", nodeIP)
	}
	if o.ServiceIP = net.ParseIP(serviceIP); o.ServiceIP == nil {
		return fmt.Errorf("pki: -service-ip: not an IP address: %q", serviceIP)
	}
	o.ExtraIPs = extra
	return pki.Generate(o)
}

func runImages(ctx context.Context, stdout io.Writer, args []string) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	var b imagebuild.Builder
	fs.StringVar(&b.RepoRoot, "repo-root", ".", "repository root")
	fs.StringVar(&b.OutDir, "out", "", "directory for the image tarballs")
	fs.StringVar(&b.Registry, "registry", "podmeta.local", "image reference prefix")
	fs.StringVar(&b.Tag, "tag", "dev", "image tag")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if b.OutDir == "" {
		return errors.New("images: -out is required")
	}
	names := fs.Args()
	if len(names) == 0 {
		for n := range Images {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	// images.txt lists "name ref tarball" for every built image so the shell
	// side imports exactly what was built.
	var manifest strings.Builder
	for _, n := range names {
		spec, ok := Images[n]
		if !ok {
			return fmt.Errorf("images: unknown image %q (known: %s)", n, strings.Join(known(), ", "))
		}
		res, err := b.Build(ctx, spec)
		if err != nil {
			return err
		}
		if res.Skipped != "" {
			fmt.Fprintf(stdout, "skipped image %s: %s\n", n, res.Skipped)
			continue
		}
		fmt.Fprintf(stdout, "built image %s (%s)\n", res.Ref, res.Tarball)
		fmt.Fprintf(&manifest, "%s %s %s\n", n, res.Ref, res.Tarball)
	}
	return os.WriteFile(filepath.Join(b.OutDir, "images.txt"), []byte(manifest.String()), 0o644)
}

func known() []string {
	var out []string
	for n := range Images {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// runCertManager makes sure cert-manager runs in the cluster KUBECONFIG names:
// the cluster's own if it has one, else hack/certmanager's test build from
// -image (certmanager.Ensure, the same code e2e/chart uses).
func runCertManager(ctx context.Context, stdout io.Writer, args []string) error {
	fs := flag.NewFlagSet("certmanager", flag.ContinueOnError)
	in := certmanager.Install{Allowed: true}
	fs.StringVar(&in.RepoRoot, "repo-root", ".", "repository root (hack/tools/certmanager.sh, hack/certmanager/deploy.yaml)")
	fs.StringVar(&in.Image, "image", "", "image of hack/certmanager's test build, already in the cluster")
	fs.BoolVar(&in.Allowed, "install", true, "install the test build when the cluster has no cert-manager; false: fail instead")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if in.Allowed && in.Image == "" {
		return errors.New("certmanager: -image is required (or -install=false)")
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(clientcmd.NewDefaultClientConfigLoadingRules(), nil).ClientConfig()
	if err != nil {
		return fmt.Errorf("certmanager: no cluster (set KUBECONFIG): %w", err)
	}
	in.Logf = func(format string, a ...any) { fmt.Fprintf(stdout, "certmanager: "+format+"\n", a...) }
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	return certmanager.Ensure(ctx, cfg, in)
}
