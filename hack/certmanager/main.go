// Command podmeta-certmanager runs cert-manager's controllers and its CA
// injector from cert-manager's exported Go packages, for the local test
// cluster only.
//
// Why it exists: the local cluster has no registry, so cert-manager's released
// images cannot be pulled, and cert-manager's own binary modules (cmd/controller,
// cmd/cainjector) are not served by the Go module proxy. Its library module is,
// so this small main wires the same pieces those binaries wire. Users install
// the real cert-manager from its released chart; nothing here ships to them.
//
// What is left out, on purpose:
//   - the ACME, Vault and Venafi issuers (Venafi's dependency is not served;
//     ACME and Vault need the internet): SelfSigned and CA are what podmeta's
//     chart uses;
//   - cert-manager's own validating/conversion webhook: objects are not
//     validated beyond their CRD schemas;
//   - leader election: one replica of each runs in the test cluster.
//
// Usage:
//
//	podmeta-certmanager controller [--kubeconfig FILE] [--cluster-resource-namespace NS] [--workers N] [--enable-certificate-owner-ref=true]
//	podmeta-certmanager cainjector [--kubeconfig FILE]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	kscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cmscheme "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/scheme"
	"github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/cert-manager/cert-manager/pkg/controller/cainjector"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"github.com/cert-manager/cert-manager/pkg/util"

	// Each import registers its controllers with controller.Known() (or its
	// issuer with the issuer factory) in an init function; the list below is
	// the whole set this binary runs.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "podmeta-certmanager:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: podmeta-certmanager controller|cainjector [flags]")
	}
	logf.InitLogs()
	defer logf.FlushLogs()
	ctx = logf.NewContext(ctx, klog.Background(), args[0])

	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file; empty means the in-cluster ServiceAccount")
	switch args[0] {
	case "controller":
		ns := fs.String("cluster-resource-namespace", "cert-manager", "namespace holding the Secrets that ClusterIssuers refer to")
		workers := fs.Int("workers", 5, "workers per controller")
		ownerRef := fs.Bool("enable-certificate-owner-ref", true, "make each Certificate own its Secret, so deleting the Certificate deletes the Secret")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return runController(ctx, *kubeconfig, *ns, *workers, *ownerRef)
	case "cainjector":
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return runCAInjector(ctx, *kubeconfig)
	default:
		return fmt.Errorf("unknown command %q: want controller or cainjector", args[0])
	}
}

// runController starts every controller registered by the imports above,
// then the shared informers they asked for, and waits until ctx ends or one
// controller fails.
func runController(ctx context.Context, kubeconfig, clusterResourceNamespace string, workers int, ownerRef bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	log := logf.FromContext(ctx)

	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   20,
		KubernetesAPIBurst: 50,
		IssuerOptions:      controller.IssuerOptions{ClusterResourceNamespace: clusterResourceNamespace},
		CertificateOptions: controller.CertificateOptions{
			EnableOwnerRef: ownerRef,
			// cert-manager's defaults for failed-request backoff.
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		return fmt.Errorf("build controller context: %w", err)
	}
	base, err := factory.Build()
	if err != nil {
		return fmt.Errorf("build controller context: %w", err)
	}

	names := make([]string, 0, len(controller.Known()))
	for name := range controller.Known() {
		names = append(names, name)
	}
	sort.Strings(names)

	errs := make(chan error, len(names))
	for _, name := range names {
		c, err := controller.Known()[name](factory)
		if err != nil {
			return fmt.Errorf("create controller %s: %w", name, err)
		}
		log.Info("starting controller", "controller", name)
		go func() {
			if err := c.Run(workers, ctx); err != nil {
				errs <- fmt.Errorf("controller %s: %w", name, err)
				return
			}
			errs <- nil
		}()
	}
	// Controllers register their informers while being constructed, so the
	// factories are started only after all of them exist.
	base.SharedInformerFactory.Start(ctx.Done())
	base.KubeSharedInformerFactory.Start(ctx.Done())
	base.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	var first error
	for range names {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	base.SharedInformerFactory.Shutdown()
	base.KubeSharedInformerFactory.Shutdown()
	base.HTTP01ResourceMetadataInformersFactory.Shutdown()
	return first
}

// runCAInjector runs the CA injector for webhook configurations, sourcing CAs
// from Certificates, Secrets and the kubeconfig as cert-manager's does.
// APIService and CRD injection are off: nothing in podmeta's cluster uses
// them, and they would need the aggregator and apiextensions schemes.
func runCAInjector(ctx context.Context, kubeconfig string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(kscheme.AddToScheme(scheme))
	utilruntime.Must(cmscheme.AddToScheme(scheme))

	ctrl.SetLogger(logf.FromContext(ctx))
	mgr, err := ctrl.NewManager(util.RestConfigWithUserAgent(cfg, "cainjector"), ctrl.Options{
		Scheme:  scheme,
		Cache:   cache.Options{ReaderFailOnMissingInformer: true},
		Metrics: metricsserver.Options{BindAddress: "0"},
		// The injector watches Secrets by metadata only and reads the one
		// it needs directly, so no Secret data is cached (as upstream).
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	err = cainjector.RegisterAllInjectors(ctx, mgr, cainjector.SetupOptions{
		EnableCertificatesDataSource: true,
		EnabledReconcilersFor: map[string]bool{
			cainjector.MutatingWebhookConfigurationName:   true,
			cainjector.ValidatingWebhookConfigurationName: true,
		},
	})
	if err != nil {
		return fmt.Errorf("register injectors: %w", err)
	}
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}
