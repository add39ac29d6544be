package admission

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/internal/writecount"
	"github.com/podmeta/podmeta/tlsrecord"
)

// Served over tlsrecord's listener, an answer larger than net/http's 4 KiB
// buffer leaves in one write over HTTP/1.1 (net/http alone: two or more).
func TestAnswerIsOneWrite(t *testing.T) {
	h, _ := newTestHandler(t)
	srv := httptest.NewUnstartedServer(h)
	counted := writecount.New(srv.Listener)
	srv.Listener = tlsrecord.Listener(counted)
	srv.Config.ConnContext = tlsrecord.ConnContext
	srv.StartTLS()
	defer srv.Close()

	body := review("u", "CREATE", "Pod", optedInPod)
	send := func() (int64, int) {
		before := counted.Writes()
		resp, err := srv.Client().Post(srv.URL+"/mutate", "application/json", strings.NewReader(body))
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
		require.Contains(t, string(b), `"patch":`)
		return counted.Writes() - before, len(b)
	}
	send() // the handshake's writes
	for range 10 {
		writes, size := send()
		require.Greater(t, size, 4<<10, "an answer larger than net/http's buffer")
		assert.Equal(t, int64(1), writes)
	}
}
