package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestReleaseScript runs scripts/release.sh for this machine's target only
// (the CI script cross-builds and vets all six): the archive and SHA256SUMS
// are written, the checksums verify, and the packed binary's `carryon
// version` prints the stamped version and the Go version.
func TestReleaseScript(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a release binary")
	}
	for _, tool := range []string{"bash", "tar", "sha256sum", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: %v", tool, err)
		}
	}
	if runtime.GOOS == "windows" {
		t.Skip("release.sh runs on a Unix build machine")
	}
	out := t.TempDir()
	target := runtime.GOOS + "/" + runtime.GOARCH
	cmd := exec.Command("bash", "../../scripts/release.sh", "v0.0.0-test", out)
	cmd.Env = append(os.Environ(), "RELEASE_TARGETS="+target)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("release.sh: %v\n%s", err, msg)
	}
	name := "carryon-v0.0.0-test-" + runtime.GOOS + "-" + runtime.GOARCH
	sums, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil || !strings.Contains(string(sums), name+".tar.gz") {
		t.Fatalf("SHA256SUMS = %q, %v; want a line for %s.tar.gz", sums, err, name)
	}
	check := exec.Command("sha256sum", "-c", "SHA256SUMS")
	check.Dir = out
	if msg, err := check.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c: %v\n%s", err, msg)
	}
	if msg, err := exec.Command("tar", "-C", out, "-xzf", filepath.Join(out, name+".tar.gz")).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, msg)
	}
	ver, err := exec.Command(filepath.Join(out, name, "carryon"), "version").CombinedOutput()
	if err != nil {
		t.Fatalf("carryon version: %v\n%s", err, ver)
	}
	for _, want := range []string{"carryon v0.0.0-test", runtime.Version(), "cpu:", "cuda:"} {
		if !strings.Contains(string(ver), want) {
			t.Errorf("carryon version lacks %q:\n%s", want, ver)
		}
	}
	if _, err := os.Stat(filepath.Join(out, name, "README.md")); err != nil {
		t.Errorf("archive lacks README.md: %v", err)
	}
}
