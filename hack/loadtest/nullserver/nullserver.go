// Package nullserver is the baseline the webhook's figures are divided by:
// a TLS server with the webhook's Go TLS and HTTP settings whose handler
// does the least any admission webhook must do (read the body, find the
// request UID, answer allowed). What it costs is the cost of Go's TLS and
// HTTP stack and of JSON on this machine; whatever the webhook costs beyond
// that is ours.
package nullserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"

	jsonv2 "github.com/go-json-experiment/json"
)

// MaxBodyBytes matches the webhook's body limit.
const MaxBodyBytes = 7 << 20

type review struct {
	Request *struct {
		UID string `json:"uid"`
	} `json:"request"`
}

type response struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Response   struct {
		UID     string `json:"uid"`
		Allowed bool   `json:"allowed"`
	} `json:"response"`
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// Handler answers every AdmissionReview with allowed: true and its UID.
// It still decodes the whole body as JSON (skipping what it does not
// need): a baseline that only scanned for the UID would not be a server
// anyone could run, and would flatter nothing but the ratio. It decodes with
// the standard library's encoding/json (JSONStd, the default: what the
// least a Go webhook does costs) or with encoding/json/v2 (JSONv2, from
// github.com/go-json-experiment/json), the decoder the webhook itself uses,
// about twice as fast here: the stricter baseline of the two.
func Handler(decoder string) (http.Handler, error) {
	var unmarshal func([]byte, any) error
	switch decoder {
	case JSONStd:
		unmarshal = json.Unmarshal
	case JSONv2:
		unmarshal = func(b []byte, v any) error { return jsonv2.Unmarshal(b, v) }
	default:
		return nil, fmt.Errorf("null: JSON decoder %q: want %s or %s", decoder, JSONStd, JSONv2)
	}
	return handler(unmarshal), nil
}

// The null handler's JSON decoders.
const (
	JSONStd = "encoding/json"
	JSONv2  = "v2"
)

func handler(unmarshal func([]byte, any) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		buf := bufPool.Get().(*bytes.Buffer)
		defer bufPool.Put(buf)
		buf.Reset()
		if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxBodyBytes)); err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		var in review
		if err := unmarshal(buf.Bytes(), &in); err != nil || in.Request == nil {
			http.Error(w, fmt.Sprintf("decode admission review: %v", err), http.StatusBadRequest)
			return
		}
		var out response
		out.APIVersion, out.Kind = "admission.k8s.io/v1", "AdmissionReview"
		out.Response.UID, out.Response.Allowed = in.Request.UID, true
		b, err := json.Marshal(&out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
}
