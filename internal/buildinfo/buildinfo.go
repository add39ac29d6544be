// Package buildinfo reports which build of podmeta is running. Release
// builds stamp the values with
//
//	go build -ldflags "-X github.com/podmeta/podmeta/internal/buildinfo.version=v1.2.3 \
//	  -X github.com/podmeta/podmeta/internal/buildinfo.commit=$(git rev-parse HEAD) \
//	  -X github.com/podmeta/podmeta/internal/buildinfo.date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
//
// and anything left unset falls back to what the Go toolchain embedded
// (module version for `go install`, VCS revision and time for builds from a
// checkout with -buildvcs).
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set with -ldflags -X; empty means "ask the toolchain".
var (
	version string
	commit  string
	date    string
)

// Info describes a build.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Date      string `json:"date"`
	Modified  bool   `json:"modified,omitempty"` // built from a checkout with uncommitted changes
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get returns the running binary's build information.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(version, commit, date, bi)
}

func fromBuildInfo(version, commit, date string, bi *debug.BuildInfo) Info {
	info := Info{Version: version, Commit: commit, Date: date, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if info.Commit == "" {
					info.Commit = s.Value
				}
			case "vcs.time":
				if info.Date == "" {
					info.Date = s.Value
				}
			case "vcs.modified":
				info.Modified = commit == "" && s.Value == "true"
			}
		}
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
	}
	if info.Version == "" {
		info.Version = "devel"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	if info.Date == "" {
		info.Date = "unknown"
	}
	return info
}

// String is the one-line form printed by `version` and logged at start-up.
func (i Info) String() string {
	commit := i.Commit
	if i.Modified {
		commit += "-dirty"
	}
	return fmt.Sprintf("%s (commit %s, built %s, %s, %s)", i.Version, commit, i.Date, i.GoVersion, i.Platform)
}
