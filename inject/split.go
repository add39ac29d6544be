package inject

import (
	"bytes"
	"fmt"
)

// chunk is one document of a YAML stream: the separator line that opened it
// (empty for a first document without one) and its body, both verbatim.
type chunk struct {
	sep, body []byte
}

// split cuts a YAML stream at its "---" lines, keeping every byte so that
// joining sep+body of all chunks gives the input back. We do not use
// apimachinery's YAMLReader because it drops the separator lines (and any
// comment on them), which would break byte-for-byte pass-through.
func split(data []byte) ([]chunk, error) {
	var chunks []chunk
	cur := chunk{}
	bodyStart := 0
	line := 0
	for off := 0; off < len(data); {
		line++
		end := len(data)
		if i := bytes.IndexByte(data[off:], '\n'); i >= 0 {
			end = off + i + 1
		}
		isSep, err := separator(data[off:end])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if isSep {
			cur.body = data[bodyStart:off]
			chunks = append(chunks, cur)
			cur = chunk{sep: data[off:end]}
			bodyStart = end
		}
		off = end
	}
	cur.body = data[bodyStart:]
	return append(chunks, cur), nil
}

// separator reports whether line is a document start marker: "---" at the
// start of a line, followed by nothing, whitespace or a comment. Content on
// the marker line ("--- !tag", "--- {a: 1}") is valid YAML but never seen in
// Kubernetes manifests; we refuse it rather than mangle it.
func separator(line []byte) (bool, error) {
	if !bytes.HasPrefix(line, []byte("---")) {
		return false, nil
	}
	rest := line[3:]
	if len(rest) > 0 && rest[0] != ' ' && rest[0] != '\t' && rest[0] != '\n' && rest[0] != '\r' {
		return false, nil // e.g. "----" or "---foo": a plain scalar, not a marker
	}
	rest = bytes.TrimSpace(rest)
	if len(rest) > 0 && rest[0] != '#' {
		return false, fmt.Errorf("content after the document marker %q is not supported: put it on the next line", "---")
	}
	return true, nil
}
