package ambassador

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassify(t *testing.T) {
	const up, ca = "https://10.96.0.1:443", "/sa/ca.crt"
	for _, tc := range []struct {
		name   string
		err    error
		code   int
		reason string
		msg    string
	}{
		{"client gone", fmt.Errorf("round trip: %w", context.Canceled), 499, "", "client disconnected"},
		{"token missing", &credentialError{errors.New("token file missing: /sa/token")}, 502, "ServiceUnavailable", "token file missing: /sa/token"},
		{"unknown CA", &url.Error{Op: "Get", URL: up, Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}, 502, "ServiceUnavailable", "API server certificate not trusted by ca.crt (/sa/ca.crt): x509: certificate signed by unknown authority"},
		{"wrong host", &tls.CertificateVerificationError{Err: x509.HostnameError{Certificate: &x509.Certificate{}, Host: "10.96.0.1"}}, 502, "ServiceUnavailable", "API server certificate not valid for https://10.96.0.1:443: x509: "},
		{"expired", &tls.CertificateVerificationError{Err: x509.CertificateInvalidError{Reason: x509.Expired, Detail: "expired yesterday"}}, 502, "ServiceUnavailable", "API server certificate invalid: x509: certificate has expired or is not yet valid: expired yesterday"},
		{"deadline", fmt.Errorf("dial: %w", context.DeadlineExceeded), 504, "Timeout", "API server https://10.96.0.1:443 did not answer in time"},
		{"net timeout", &net.OpError{Op: "dial", Err: timeoutErr{}}, 504, "Timeout", "did not answer in time"},
		{"refused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, 502, "ServiceUnavailable", "API server https://10.96.0.1:443 unreachable: dial tcp: connect: connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, reason, msg := classify(tc.err, up, ca)
			assert.Equal(t, tc.code, code)
			assert.Equal(t, tc.reason, reason)
			assert.Contains(t, msg, tc.msg)
		})
	}
}

func TestWriteStatus(t *testing.T) {
	rec := httptest.NewRecorder()
	writeStatus(rec, http.StatusForbidden, "Forbidden", `podmeta-ambassador: refused by rule "read-only": no`, "read-only")
	assert.Equal(t, http.StatusForbidden, rec.Code)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	assert.JSONEq(t, `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
		"message":"podmeta-ambassador: refused by rule \"read-only\": no","reason":"Forbidden",
		"details":{"causes":[{"reason":"PodmetaAmbassadorPolicy","message":"read-only","field":"rule"}]},"code":403}`, rec.Body.String())
	assert.Equal(t, fmt.Sprint(rec.Body.Len()), rec.Header().Get("Content-Length"))
}
