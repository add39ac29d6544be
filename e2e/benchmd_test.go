package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// replaceSection replaces the markdown section starting with heading (up to
// the next "## " heading) in file, or appends it; the file is created if
// missing.
func replaceSection(file, heading, section string) error {
	old, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	s := string(old)
	if s == "" {
		s = "# Benchmarks\n"
	}
	if i := strings.Index(s, heading+"\n"); i >= 0 {
		rest := s[i+len(heading)+1:]
		end := len(s)
		if j := strings.Index(rest, "\n## "); j >= 0 {
			end = i + len(heading) + 1 + j + 1
		}
		s = s[:i] + section + "\n" + strings.TrimLeft(s[end:], "\n")
	} else {
		s = strings.TrimRight(s, "\n") + "\n\n" + section
	}
	return os.WriteFile(file, []byte(strings.TrimRight(s, "\n")+"\n"), 0o644)
}

func TestReplaceSection(t *testing.T) {
	file := filepath.Join(t.TempDir(), "B.md")
	const h = "## Pod creation through the API server"
	require.NoError(t, replaceSection(file, h, h+"\n\nfirst\n"))
	b, _ := os.ReadFile(file)
	assert.Equal(t, "# Benchmarks\n\n"+h+"\n\nfirst\n", string(b), "created")

	require.NoError(t, os.WriteFile(file, []byte("# Benchmarks\n\n## A\n\na\n\n"+h+"\n\nold\n\n## C\n\nc\n"), 0o644))
	require.NoError(t, replaceSection(file, h, h+"\n\nnew\n"))
	b, _ = os.ReadFile(file)
	assert.Equal(t, "# Benchmarks\n\n## A\n\na\n\n"+h+"\n\nnew\n\n## C\n\nc\n", string(b), "replaced in the middle, neighbours kept")

	require.NoError(t, replaceSection(file, "## D", "## D\n\nd\n"))
	b, _ = os.ReadFile(file)
	assert.True(t, strings.HasSuffix(string(b), "## C\n\nc\n\n## D\n\nd\n"), "appended: %q", b)
}
