package jsonstr

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAppendEveryByte: every byte value, alone, amid plain text and next
// to escaped quotes and backslashes, is quoted exactly as encoding/json
// quotes it.
func TestAppendEveryByte(t *testing.T) {
	for c := range 256 {
		b := string([]byte{byte(c)})
		for _, s := range []string{b, "ab" + b + "cd", b + b + `x"y\z` + b, `{"a":"` + b + `\"}`} {
			want, err := json.Marshal(s)
			require.NoError(t, err)
			assert.Equal(t, "pre"+string(want), string(Append([]byte("pre"), s)), "byte %#x in %q", c, s)
		}
		// At every offset of a longer string, twice.
		for p := range 18 {
			s := strings.Repeat("a", p) + b + strings.Repeat("z", 17-p) + b + "0123456789"
			want, err := json.Marshal(s)
			require.NoError(t, err)
			require.Equal(t, string(want), string(Append(nil, s)), "byte %#x at %d", c, p)
		}
	}
}

func BenchmarkAppend(b *testing.B) {
	s := "/spec/containers/0/env/-" // a typical patch string
	buf := make([]byte, 0, 64)
	for b.Loop() {
		buf = Append(buf[:0], s)
	}
}
