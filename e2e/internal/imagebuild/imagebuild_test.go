package imagebuild

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeRepo writes a tiny module: a main package, a library package and an
// empty directory, the three cases the builder must tell apart.
func fakeRepo(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"go.mod":            "module example.com/fake\n\ngo 1.26\n",
		"cmd/hello/main.go": "package main\n\nfunc main() { println(\"hello\") }\n",
		"lib/lib.go":        "package lib\n\nconst X = 1\n",
		"cmd/empty/README":  "nothing here yet\n",
	}
	for p, content := range files {
		full := filepath.Join(root, p)
		require.NoError(t, os.MkdirAll(filepath.Dir(full), 0o755))
		require.NoError(t, os.WriteFile(full, []byte(content), 0o644))
	}
	return root
}

func TestBuildWritesARunnableSingleLayerImage(t *testing.T) {
	root := fakeRepo(t)
	b := Builder{RepoRoot: root, OutDir: t.TempDir(), Registry: "podmeta.local", Tag: "test", GOARCH: "amd64"}
	res, err := b.Build(context.Background(), Spec{Name: "hello", Package: "./cmd/hello", Binary: "hello-bin"})
	require.NoError(t, err)
	require.Empty(t, res.Skipped)
	assert.Equal(t, "podmeta.local/hello:test", res.Ref)
	assert.Equal(t, filepath.Join(b.OutDir, "hello.tar"), res.Tarball)

	tag, err := name.NewTag(res.Ref)
	require.NoError(t, err)
	img, err := tarball.ImageFromPath(res.Tarball, &tag)
	require.NoError(t, err, "the tarball holds the image under its reference")
	cf, err := img.ConfigFile()
	require.NoError(t, err)
	assert.Equal(t, "linux", cf.OS)
	assert.Equal(t, "amd64", cf.Architecture)
	assert.Equal(t, []string{"/hello-bin"}, cf.Config.Entrypoint)
	assert.Equal(t, NonRootUser, cf.Config.User)

	layers, err := img.Layers()
	require.NoError(t, err)
	require.Len(t, layers, 1)
	rc, err := layers[0].Uncompressed()
	require.NoError(t, err)
	defer rc.Close()
	entries := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		entries[h.Name] = h
	}
	require.Contains(t, entries, "hello-bin")
	assert.Equal(t, int64(0o755), entries["hello-bin"].Mode)
	assert.Greater(t, entries["hello-bin"].Size, int64(1000), "the layer holds the compiled binary")
	require.Contains(t, entries, "tmp/")
	assert.Equal(t, int64(0o1777), entries["tmp/"].Mode)
}

func TestBuildSkipsPackagesThatDoNotExistYet(t *testing.T) {
	root := fakeRepo(t)
	b := Builder{RepoRoot: root, OutDir: t.TempDir(), Registry: "podmeta.local", Tag: "test"}
	for _, tc := range []struct{ pkg, why string }{
		{"./cmd/missing", "does not exist"},
		{"./cmd/empty", "has no main package yet"},
		{"./lib", "has no main package yet"},
	} {
		res, err := b.Build(context.Background(), Spec{Name: "x", Package: tc.pkg})
		require.NoError(t, err, tc.pkg)
		assert.Contains(t, res.Skipped, tc.why, tc.pkg)
		assert.Contains(t, res.Skipped, tc.pkg, "the message names the package")
		assert.Empty(t, res.Tarball)
	}
	_, err := os.Stat(filepath.Join(b.OutDir, "x.tar"))
	assert.True(t, os.IsNotExist(err), "nothing written for skipped images")
}

func TestBuildReportsCompileErrors(t *testing.T) {
	root := fakeRepo(t)
	require.NoError(t, os.WriteFile(filepath.Join(root, "cmd/hello/main.go"), []byte("package main\n\nfunc main() { undefined() }\n"), 0o644))
	b := Builder{RepoRoot: root, OutDir: t.TempDir(), Registry: "podmeta.local", Tag: "test"}
	_, err := b.Build(context.Background(), Spec{Name: "hello", Package: "./cmd/hello"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "undefined")
}

func TestBuildRejectsInvalidReferences(t *testing.T) {
	b := Builder{RepoRoot: fakeRepo(t), OutDir: t.TempDir(), Registry: "podmeta.local", Tag: "Not A Tag"}
	_, err := b.Build(context.Background(), Spec{Name: "hello", Package: "./cmd/hello"})
	assert.ErrorContains(t, err, "reference")
}
