// Package imagebuild turns a Go main package into a container image tarball
// without a registry or a Docker engine: a static binary in a single layer on
// an empty base. containerd imports the tarball (`ctr images import`) and kind
// loads it (`kind load image-archive`).
package imagebuild

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// NonRootUser is the uid:gid our images run as ("nonroot" in distroless).
const NonRootUser = "65532:65532"

// Spec is one image to build.
type Spec struct {
	Name    string // image name, also the tarball's file name
	Package string // Go package path relative to the repository root, e.g. ./cmd/webhook
	Binary  string // file name of the binary in the image (the Entrypoint); Name if empty
}

// Builder builds images from one repository checkout.
type Builder struct {
	RepoRoot string // repository root; packages are relative to it
	OutDir   string // where <name>.tar files are written
	Registry string // image reference prefix, e.g. podmeta.local
	Tag      string // image tag, e.g. dev
	GOARCH   string // target architecture; the Go default if empty
}

// Result says what happened to one Spec.
type Result struct {
	Ref     string // image reference inside the tarball
	Tarball string // path of the written tarball
	Skipped string // non-empty: why nothing was built (the package does not exist yet)
}

// ErrNotMain marks a package that exists but has no main package to build.
var errNotMain = errors.New("not a main package")

// Ref returns the reference an image named n gets.
func (b Builder) Ref(n string) string {
	return fmt.Sprintf("%s/%s:%s", strings.TrimSuffix(b.Registry, "/"), n, b.Tag)
}

// Build compiles s.Package statically and writes its image tarball. A package
// directory that is missing, or holds no main package yet, is skipped with the
// reason in Result.Skipped rather than failing: images of components still in
// development must not break the harness.
func (b Builder) Build(ctx context.Context, s Spec) (Result, error) {
	if s.Binary == "" {
		s.Binary = s.Name
	}
	ref := b.Ref(s.Name)
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: reference %q: %w", s.Name, ref, err)
	}
	root, err := filepath.Abs(b.RepoRoot)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Name, err)
	}
	dir := filepath.Join(root, filepath.FromSlash(s.Package))
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return Result{Ref: ref, Skipped: fmt.Sprintf("%s does not exist", s.Package)}, nil
	}
	modDir, err := moduleDir(root, dir)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Name, err)
	}
	rel, err := filepath.Rel(modDir, dir)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Name, err)
	}
	pkg := "./" + filepath.ToSlash(rel)
	if err := b.checkMain(ctx, modDir, pkg); err != nil {
		if errors.Is(err, errNotMain) {
			return Result{Ref: ref, Skipped: fmt.Sprintf("%s has no main package yet", s.Package)}, nil
		}
		return Result{}, fmt.Errorf("image %s: %w", s.Name, err)
	}
	tmp, err := os.MkdirTemp("", "imagebuild-")
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Name, err)
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, s.Binary)
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg)
	build.Dir = modDir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b.GOARCH != "" {
		build.Env = append(build.Env, "GOARCH="+b.GOARCH)
	}
	if out, err := build.CombinedOutput(); err != nil {
		return Result{}, fmt.Errorf("image %s: go build %s: %w\n%s", s.Name, s.Package, err, out)
	}
	img, err := Image(bin, s.Binary, b.arch())
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Name, err)
	}
	if err := os.MkdirAll(b.OutDir, 0o755); err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Name, err)
	}
	out := filepath.Join(b.OutDir, s.Name+".tar")
	if err := tarball.WriteToFile(out, tag, img); err != nil {
		return Result{}, fmt.Errorf("image %s: writing %s: %w", s.Name, out, err)
	}
	return Result{Ref: ref, Tarball: out}, nil
}

func (b Builder) arch() string {
	if b.GOARCH != "" {
		return b.GOARCH
	}
	out, err := exec.Command("go", "env", "GOARCH").Output()
	if err != nil {
		return "amd64"
	}
	return strings.TrimSpace(string(out))
}

func (b Builder) checkMain(ctx context.Context, modDir, pkg string) error {
	cmd := exec.CommandContext(ctx, "go", "list", "-f", "{{.Name}}", pkg)
	cmd.Dir = modDir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if strings.Contains(stderr.String(), "no Go files") {
			return errNotMain
		}
		return fmt.Errorf("go list %s: %w\n%s", pkg, err, stderr.String())
	}
	if strings.TrimSpace(string(out)) != "main" {
		return errNotMain
	}
	return nil
}

// moduleDir finds the directory of the go.mod that owns dir, not above root.
func moduleDir(root, dir string) (string, error) {
	d := dir
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if d == root || d == filepath.Dir(d) {
			return "", fmt.Errorf("no go.mod above %s within %s", dir, root)
		}
		d = filepath.Dir(d)
	}
}

// Image returns a single-layer image holding the file at bin as /<binary>,
// its Entrypoint, running as NonRootUser. /tmp exists (world-writable, sticky)
// because many programs expect it.
func Image(bin, binary, arch string) (v1.Image, error) {
	layerTar, err := layer(bin, binary)
	if err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = arch
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()} // reproducible
	cf.Config.Entrypoint = []string{"/" + binary}
	cf.Config.User = NonRootUser
	cf.Config.WorkingDir = "/"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return img, nil
}

func layer(bin, binary string) ([]byte, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	hdrs := []struct {
		h    tar.Header
		data []byte
	}{
		{tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: epoch}, nil},
		{tar.Header{Name: binary, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data)), ModTime: epoch}, data},
	}
	for _, e := range hdrs {
		if err := tw.WriteHeader(&e.h); err != nil {
			return nil, err
		}
		if e.data != nil {
			if _, err := tw.Write(e.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
