package ambassador

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/valyala/fasthttp"
)

// status is the subset of metav1.Status that clients (kubectl, client-go)
// read from an error response. Written by hand so the ambassador does not
// pull in k8s.io/apimachinery.
type status struct {
	Kind       string         `json:"kind"`
	APIVersion string         `json:"apiVersion"`
	Metadata   struct{}       `json:"metadata"`
	Status     string         `json:"status"`
	Message    string         `json:"message"`
	Reason     string         `json:"reason"`
	Details    *statusDetails `json:"details,omitempty"`
	Code       int            `json:"code"`
}

type statusDetails struct {
	Causes []statusCause `json:"causes,omitempty"`
}

type statusCause struct {
	Type    string `json:"reason"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// statusBody is a Failure Status as JSON with a trailing newline. rule,
// when set, is named as the cause so a client can tell which policy rule
// refused it.
func statusBody(code int, reason, message, rule string) []byte {
	s := status{
		Kind:       "Status",
		APIVersion: "v1",
		Status:     "Failure",
		Message:    message,
		Reason:     reason,
		Code:       code,
	}
	if rule != "" {
		s.Details = &statusDetails{Causes: []statusCause{{Type: "PodmetaAmbassadorPolicy", Message: rule, Field: "rule"}}}
	}
	body, _ := json.Marshal(s) // cannot fail: only strings and ints
	return append(body, '\n')
}

// writeStatus writes a Failure Status (see statusBody).
func writeStatus(w http.ResponseWriter, code int, reason, message, rule string) {
	body := statusBody(code, reason, message, rule)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// writeStatusCtx is writeStatus for the fasthttp proxy listener; it returns
// code for the metrics.
func writeStatusCtx(ctx *fasthttp.RequestCtx, code int, reason, message, rule string) int {
	ctx.Response.Reset()
	ctx.SetStatusCode(code)
	ctx.SetContentType("application/json")
	ctx.Response.Header.Set("X-Content-Type-Options", "nosniff")
	ctx.SetBody(statusBody(code, reason, message, rule))
	return code
}

// errClientGone marks requests whose client went away; nothing is written.
var errClientGone = errors.New("client disconnected")

// classify turns an upstream round-trip error into a status code, a reason
// and a message a user can act on.
func classify(err error, upstream, caFile string) (int, string, string) {
	var (
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
		verifyErr *tls.CertificateVerificationError
		netErr    net.Error
		credErr   *credentialError
	)
	switch {
	case errors.Is(err, context.Canceled):
		return 499, "", errClientGone.Error()
	case errors.As(err, &credErr):
		return http.StatusBadGateway, "ServiceUnavailable", credErr.Error()
	case errors.As(err, &unknownCA):
		return http.StatusBadGateway, "ServiceUnavailable", fmt.Sprintf("API server certificate not trusted by ca.crt (%s): %v", caFile, unknownCA)
	case errors.As(err, &hostErr):
		return http.StatusBadGateway, "ServiceUnavailable", fmt.Sprintf("API server certificate not valid for %s: %v", upstream, hostErr)
	case errors.As(err, &invalid):
		return http.StatusBadGateway, "ServiceUnavailable", fmt.Sprintf("API server certificate invalid: %v", invalid)
	case errors.As(err, &verifyErr):
		return http.StatusBadGateway, "ServiceUnavailable", fmt.Sprintf("API server certificate not trusted by ca.crt (%s): %v", caFile, verifyErr.Err)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return http.StatusGatewayTimeout, "Timeout", fmt.Sprintf("API server %s did not answer in time: %v", upstream, err)
	default:
		return http.StatusBadGateway, "ServiceUnavailable", fmt.Sprintf("API server %s unreachable: %v", upstream, err)
	}
}

// credentialError is a missing or unreadable token or CA file.
type credentialError struct{ err error }

func (e *credentialError) Error() string { return e.err.Error() }
func (e *credentialError) Unwrap() error { return e.err }
