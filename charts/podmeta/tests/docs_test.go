package tests

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// shellCommands returns the commands of a document's sh code blocks, each on
// one line (backslash continuations joined).
func shellCommands(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var cmds []string
	for _, block := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		joined := regexp.MustCompile(`\\\n\s*`).ReplaceAllString(block[1], "")
		for _, line := range strings.Split(joined, "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				cmds = append(cmds, line)
			}
		}
	}
	return cmds
}

// TestChartReadmeInstall: the chart README installs the way the main README
// does (images are not published, so every install sets the image values;
// with cert-manager it waits for the certificate, the caBundle cainjector
// writes and the rollout, as the main README and NOTES.txt do), so following
// either gives a webhook that serves.
func TestChartReadmeInstall(t *testing.T) {
	main := shellCommands(t, "../../../README.md")
	chart := shellCommands(t, "../README.md")

	var installs int
	for _, c := range chart {
		if strings.HasPrefix(c, "helm install podmeta charts/podmeta") {
			installs++
			assert.Contains(t, c, "--set image.repository=", "the webhook image is not published: %s", c)
			assert.Contains(t, c, "--set config.ambassador.image.repository=", "the ambassador image is not published: %s", c)
		}
	}
	assert.Equal(t, 2, installs, "with and without cert-manager")

	// The main README's install with cert-manager and its three waits, verbatim.
	i := slices.IndexFunc(main, func(c string) bool { return strings.HasPrefix(c, "helm install podmeta charts/podmeta") })
	require.GreaterOrEqual(t, i, 0, "no install in the main README")
	require.Greater(t, len(main), i+3)
	want := main[i : i+4]
	for _, w := range want[1:] {
		require.True(t, strings.HasPrefix(w, "kubectl"), "the main README's install is not followed by three waits: %q", want)
	}
	assert.Contains(t, want[2], "caBundle")
	for _, w := range want {
		assert.Contains(t, chart, w)
	}
}
