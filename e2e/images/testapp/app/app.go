// Package app is the HTTP handler of the e2e test app, separate from main so
// it can be tested without a process or a cluster.
package app

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Config says where the app finds what it reports.
type Config struct {
	PodinfoDir     string // downwardAPI volume, /etc/podinfo by default
	SADir          string // ServiceAccount token mount
	AmbassadorURL  string // base URL of the ambassador sidecar
	Environ        func() []string
	RequestTimeout time.Duration
}

// ConfigFromEnv returns the defaults, overridden by PODINFO_DIR and AMBASSADOR_URL.
func ConfigFromEnv() Config {
	c := Config{
		PodinfoDir:     "/etc/podinfo",
		SADir:          "/var/run/secrets/kubernetes.io/serviceaccount",
		AmbassadorURL:  "http://127.0.0.1:8001",
		Environ:        os.Environ,
		RequestTimeout: 10 * time.Second,
	}
	if v := os.Getenv("PODINFO_DIR"); v != "" {
		c.PodinfoDir = v
	}
	if v := os.Getenv("AMBASSADOR_URL"); v != "" {
		c.AmbassadorURL = v
	}
	return c
}

// Result is what /fetch and /relay report: the upstream's answer, verbatim.
type Result struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
	Error  string `json:"error,omitempty"`
}

// maxBody bounds what the app reads from an upstream; tests read small objects.
const maxBody = 4 << 20

// New returns the app's handler.
func New(c Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("GET /env", func(w http.ResponseWriter, _ *http.Request) {
		env := map[string]string{}
		for _, kv := range c.Environ() {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		writeJSON(w, http.StatusOK, env)
	})
	mux.HandleFunc("GET /podinfo", func(w http.ResponseWriter, _ *http.Request) {
		files, err := readDir(c.PodinfoDir)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		writeJSON(w, http.StatusOK, files)
	})
	mux.HandleFunc("GET /fetch", func(w http.ResponseWriter, r *http.Request) {
		target := r.URL.Query().Get("url")
		u, err := url.Parse(target)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			http.Error(w, fmt.Sprintf("query parameter url: want an absolute http(s) URL, got %q", target), http.StatusBadRequest)
			return
		}
		client := &http.Client{Timeout: c.RequestTimeout, Transport: transport(nil)}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u.String(), nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if r.URL.Query().Get("sa") == "true" {
			tr, token, err := serviceAccountTransport(c.SADir)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			client.Transport = tr
			req.Header.Set("Authorization", "Bearer "+token)
		}
		writeJSON(w, http.StatusOK, do(client, req))
	})
	mux.HandleFunc("/relay/", func(w http.ResponseWriter, r *http.Request) {
		target := strings.TrimSuffix(c.AmbassadorURL, "/") + "/" + strings.TrimPrefix(r.URL.Path, "/relay/")
		if r.URL.RawQuery != "" {
			target += "?" + r.URL.RawQuery
		}
		req, err := http.NewRequestWithContext(r.Context(), r.Method, target, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		writeJSON(w, http.StatusOK, do(&http.Client{Timeout: c.RequestTimeout, Transport: transport(nil)}, req))
	})
	return mux
}

func do(client *http.Client, req *http.Request) Result {
	resp, err := client.Do(req)
	if err != nil {
		return Result{Error: err.Error()}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	res := Result{Status: resp.StatusCode, Body: string(body)}
	if err != nil {
		res.Error = fmt.Sprintf("reading body: %v", err)
	}
	return res
}

// serviceAccountTransport trusts only the pod's ca.crt, as in-cluster clients do.
func serviceAccountTransport(dir string) (*http.Transport, string, error) {
	token, err := os.ReadFile(filepath.Join(dir, "token"))
	if err != nil {
		return nil, "", fmt.Errorf("service account token: %w", err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, "", fmt.Errorf("service account ca.crt: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, "", fmt.Errorf("service account ca.crt in %s: no PEM certificates", dir)
	}
	return transport(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}), strings.TrimSpace(string(token)), nil
}

// readDir returns the regular files of a downwardAPI volume, those in
// subdirectories (podmeta's per-container files, <container>/cpu_request) as
// "dir/file". The kubelet writes them through ..data symlinks; hidden entries
// are its bookkeeping.
func readDir(dir string) (map[string]string, error) {
	out := map[string]string{}
	return out, readInto(out, dir, "")
}

func readInto(out map[string]string, dir, prefix string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reading %s: %w", dir, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		st, err := os.Stat(p) // follows the kubelet's symlinks
		if err != nil {
			continue
		}
		if st.IsDir() {
			if err := readInto(out, p, prefix+e.Name()+"/"); err != nil {
				return err
			}
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("reading %s: %w", p, err)
		}
		out[prefix+e.Name()] = string(b)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// transport is a fresh transport per request: no proxy from the environment
// (the app only talks to in-cluster addresses) and no pooled connections, so
// each report reflects exactly one request. RequestTimeout bounds it all.
func transport(tlsConfig *tls.Config) *http.Transport {
	return &http.Transport{TLSClientConfig: tlsConfig, DisableKeepAlives: true}
}
