package ambassador

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"testing"
)

// benchBody is about the size of a 20-pod list.
var benchBody = bytes.Repeat([]byte(`{"metadata":{"name":"web-00001","namespace":"default"},"spec":{},"status":{}},`), 21*1024/78)

// BenchmarkList compares one list request through the ambassador with the
// same request sent directly to the TLS stand-in, in the same run:
// go test -bench List -benchmem ./ambassador
func BenchmarkList(b *testing.B) {
	api := newAPIServer(b, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(benchBody)
	})
	vol := newSAVolume(b, "tok", api.caPEM())
	h := startAmbassador(b, api.URL, vol.token(), vol.ca())
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(api.caPEM())
	direct := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true, DisableCompression: true}}

	get := func(b *testing.B, c *http.Client, url string) {
		res, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || n != int64(len(benchBody)) {
			b.Fatalf("status %d, %d bytes", res.StatusCode, n)
		}
	}
	b.Run("direct", func(b *testing.B) {
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				get(b, direct, api.URL+"/api/v1/pods")
			}
		})
	})
	b.Run("ambassador", func(b *testing.B) {
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				get(b, h.client, h.url+"/api/v1/pods")
			}
		})
	})
}
