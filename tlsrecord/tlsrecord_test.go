package tlsrecord

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stream builds TLS-framed records with the given body lengths and
// returns the bytes and the offsets where each header and body ends.
func stream(lengths []int) ([]byte, []int) {
	var b []byte
	var bounds []int
	for i, l := range lengths {
		b = append(b, 23, 3, 3, byte(l>>8), byte(l))
		bounds = append(bounds, len(b))
		for j := range l {
			b = append(b, byte(i+j))
		}
		bounds = append(bounds, len(b))
	}
	return b, bounds
}

// greedyConn is a socket with everything already received: each Read
// returns as much as asked for. With eofWithData, the read that reaches
// the end also returns io.EOF, as some connections do.
type greedyConn struct {
	net.Conn
	r           *bytes.Reader
	reads       int
	eofWithData bool
}

func (g *greedyConn) Read(p []byte) (int, error) {
	g.reads++
	n, err := g.r.Read(p)
	if err == nil && g.eofWithData && g.r.Len() == 0 {
		err = io.EOF
	}
	return n, err
}

func TestReadsStopAtRecordBoundaries(t *testing.T) {
	lengths := []int{517, 0, 1, 1208, 16401, 16401, 5, 0, 14249, 16640, 3}
	full, bounds := stream(lengths)
	// The peer may also go away after part of a header.
	truncated := append(append([]byte{}, full...), 23, 3, 3)
	for _, data := range [][]byte{full, truncated} {
		for _, eofWithData := range []bool{false, true} {
			for _, size := range []int{1, 2, 5, 6, 517, 4096, 16406, 40000} {
				src := &greedyConn{r: bytes.NewReader(data), eofWithData: eofWithData}
				c := &Conn{Conn: src}
				var got []byte
				p := make([]byte, size)
				for {
					n, err := c.Read(p)
					start := len(got)
					got = append(got, p[:n]...)
					if i := sort.SearchInts(bounds, start+1); i < len(bounds) && bounds[i] < len(got) {
						t.Fatalf("size %d: read [%d,%d) crosses a record boundary at %d", size, start, len(got), bounds[i])
					}
					if err != nil {
						require.ErrorIs(t, err, io.EOF)
						break
					}
					require.NotZero(t, n, "size %d: empty read without an error", size)
				}
				require.Equal(t, data, got, "size %d: bytes changed", size)
				if size == 40000 && len(data) == len(full) {
					// A body's read also fetches the next header, so each
					// record costs one read; records without a body (whose
					// next header is not asked for with it) and the first
					// header one more each, and one read meets EOF unless
					// the last data came with it.
					want := len(lengths) + 2
					if eofWithData {
						want--
					}
					assert.Equal(t, want, src.reads, "system calls")
				}
			}
		}
	}
}

// A record arriving in pieces (a slow peer, small TCP segments) is handed
// out as it comes, never waiting for more than what was asked.
func TestPartialReads(t *testing.T) {
	data, _ := stream([]int{300, 20})
	server, client := net.Pipe()
	defer server.Close()
	go func() {
		for _, piece := range [][]byte{data[:2], data[2:5], data[5:100], data[100:305], data[305:]} {
			_, _ = client.Write(piece)
		}
		client.Close()
	}()
	got, err := io.ReadAll(&Conn{Conn: server})
	require.NoError(t, err)
	assert.Equal(t, data, got)
}

// TestTLSConnectionMemory: connections that each received a review sent
// as several full-size records at once hold less heap behind the wrapper
// than without it, and the bytes arrive intact.
func TestTLSConnectionMemory(t *testing.T) {
	const conns, review = 32, 47 << 10
	// Go's TLS writers start a connection with small records and send full
	// 16 KiB ones only after 128 KiB: warm each connection up first, as the
	// API server's keep-alive connections are.
	const warmUp = 130 << 10
	payload := make([]byte, review)
	_, _ = rand.Read(payload)
	held := func(wrap bool) uint64 {
		cert := selfSigned(t)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		if wrap {
			ln = Listener(ln)
		}
		tln := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		accepted := make(chan net.Conn)
		go func() {
			for {
				c, err := tln.Accept()
				if err != nil {
					return
				}
				_ = c.(*tls.Conn).Handshake()
				accepted <- c
			}
		}()
		pool := x509.NewCertPool()
		pool.AddCert(cert.Leaf)
		var open []net.Conn
		defer func() {
			for _, c := range open {
				c.Close()
			}
		}()
		write := func(c net.Conn, b []byte) chan error {
			done := make(chan error, 1)
			go func() { _, err := c.Write(b); done <- err }()
			return done
		}
		for range conns {
			client, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "localhost"})
			require.NoError(t, err)
			server := <-accepted
			open = append(open, client, server)

			done := write(client, make([]byte, warmUp))
			_, err = io.ReadFull(server, make([]byte, warmUp))
			require.NoError(t, err)
			require.NoError(t, <-done)

			// The whole review is in the socket before the server reads.
			require.NoError(t, <-write(client, payload))
			got := make([]byte, review)
			_, err = io.ReadFull(server, got)
			require.NoError(t, err)
			require.Equal(t, payload, got, "bytes changed")
		}
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	var plain, wrapped []uint64
	for range 3 { // alternated, the median of each: GC timing adds noise
		plain = append(plain, held(false))
		wrapped = append(wrapped, held(true))
	}
	saved := (int64(median(plain)) - int64(median(wrapped))) / conns
	t.Logf("heap with %d connections: %d bytes plain, %d wrapped: %d bytes less per connection", conns, median(plain), median(wrapped), saved)
	assert.Greater(t, saved, int64(6<<10), "a connection's TLS read buffer should be 40 KiB without the wrapper, 32 KiB with it")
}

func median(v []uint64) uint64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(mrand.Int64()), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// scriptedConn returns the given reads in turn.
type scriptedConn struct {
	net.Conn
	reads []scripted
}

type scripted struct {
	data []byte
	err  error
}

func (s *scriptedConn) Read(p []byte) (int, error) {
	r := s.reads[0]
	s.reads = s.reads[1:]
	return copy(p, r.data), r.err
}

// An error that comes with bytes past the record is returned right after
// the last of them, once: in order, as the connection reported it (a read
// after a deadline error may go on).
func TestErrorWithExtraBytes(t *testing.T) {
	errTimeout := errors.New("i/o timeout")
	type result struct {
		n   int
		err error
	}
	for name, tc := range map[string]struct {
		lengths []int
		reads   func(data []byte) []scripted
		want    []result
	}{
		"part of the next header": {
			lengths: []int{3, 2},
			reads: func(d []byte) []scripted {
				return []scripted{{data: d[:5]}, {data: d[5:10], err: errTimeout}, {data: d[10:13]}, {data: d[13:]}}
			},
			want: []result{{5, nil}, {3, nil}, {2, errTimeout}, {3, nil}, {2, nil}},
		},
		"all of the next header, then an error of its own": {
			lengths: []int{3, 2, 1},
			reads: func(d []byte) []scripted {
				return []scripted{{data: d[:5]}, {data: d[5:13], err: errTimeout}, {err: errTimeout}, {data: d[13:15]}, {data: d[15:20]}, {data: d[20:]}}
			},
			want: []result{{5, nil}, {3, nil}, {5, errTimeout}, {0, errTimeout}, {2, nil}, {5, nil}, {1, nil}},
		},
	} {
		t.Run(name, func(t *testing.T) {
			data, _ := stream(tc.lengths)
			c := &Conn{Conn: &scriptedConn{reads: tc.reads(data)}}
			p := make([]byte, 100)
			var got []byte
			var results []result
			for len(got) < len(data) {
				n, err := c.Read(p)
				got = append(got, p[:n]...)
				results = append(results, result{n, err})
				require.LessOrEqual(t, len(results), len(tc.want), "more reads than expected: %v", results)
			}
			assert.Equal(t, data, got)
			assert.Equal(t, tc.want, results)
		})
	}
}

// Behind an http.Server that calls ReadAheadIfHTTP2, HTTP/2 connections
// read ahead and HTTP/1.1 ones stay limited; bodies arrive intact on both.
func TestReadAheadIfHTTP2(t *testing.T) {
	cert := selfSigned(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	type connKey struct{}
	srv := &http.Server{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateActive {
				ReadAheadIfHTTP2(c)
			}
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rc := r.Context().Value(connKey{}).(*tls.Conn).NetConn().(*Conn)
			sum := sha256.New()
			_, _ = io.Copy(sum, r.Body)
			fmt.Fprintf(w, "%s %v %x", r.Proto, rc.ahead.Load(), sum.Sum(nil))
		}),
	}
	go func() { _ = srv.ServeTLS(Listener(ln), "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	body := make([]byte, 100<<10) // several records
	_, _ = rand.Read(body)
	want := sha256.Sum256(body)
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	for _, h2 := range []bool{true, false} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		for range 3 {
			resp, err := (&http.Client{Transport: tr}).Post("https://"+ln.Addr().String()+"/", "application/octet-stream", bytes.NewReader(body))
			require.NoError(t, err)
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			proto := "HTTP/1.1"
			if h2 {
				proto = "HTTP/2.0"
			}
			assert.Equal(t, fmt.Sprintf("%s %v %x", proto, h2, want), string(got))
		}
		tr.CloseIdleConnections()
	}
}
