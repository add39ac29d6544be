package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestFromBuildInfo(t *testing.T) {
	vcs := &debug.BuildInfo{
		GoVersion: "go1.26.0",
		Main:      debug.Module{Path: "github.com/podmeta/podmeta", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abc123"},
			{Key: "vcs.time", Value: "2026-11-27T10:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	installed := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.3.0"}}
	plat := runtime.GOOS + "/" + runtime.GOARCH

	tests := []struct {
		name                  string
		version, commit, date string
		bi                    *debug.BuildInfo
		want                  string
	}{
		{"ldflags win", "v1.0.0", "deadbeef", "2026-01-01", vcs, "v1.0.0 (commit deadbeef, built 2026-01-01, go1.26.0, " + plat + ")"},
		{"vcs stamps", "", "", "", vcs, "devel (commit abc123-dirty, built 2026-11-27T10:00:00Z, go1.26.0, " + plat + ")"},
		{"go install", "", "", "", installed, "v0.3.0 (commit unknown, built unknown, go1.26.0, " + plat + ")"},
		{"nothing known", "", "", "", nil, "devel (commit unknown, built unknown, " + runtime.Version() + ", " + plat + ")"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, fromBuildInfo(tc.version, tc.commit, tc.date, tc.bi).String())
		})
	}
}
