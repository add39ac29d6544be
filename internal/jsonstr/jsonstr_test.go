package jsonstr

import (
	"encoding/json"
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
	}
}
