package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"carryon/node"
	"carryon/swarm"
)

// TestAdvertIntervalDocs: --help, docs/operating.md's flag table and
// docs/protocol.md state the advert interval the node really uses.
func TestAdvertIntervalDocs(t *testing.T) {
	want := node.DefaultInternetConfig().AdvertInterval
	var out, errb strings.Builder
	run([]string{"node", "--help"}, &out, &errb)
	if !regexp.MustCompile(`-advert-interval duration\s+how often to re-advertise \(default ` + regexp.QuoteMeta(want.String()) + `\)`).
		MatchString(errb.String()) {
		t.Errorf("node --help does not give the default %v:\n%s", want, errb.String())
	}
	op, err := os.ReadFile("../../docs/operating.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("\\| `--advert-interval` \\| ([^ |]+) \\|").FindSubmatch(op)
	if m == nil || string(m[1]) != want.String() {
		t.Errorf("docs/operating.md's flag table gives %q, the code %v", m, want)
	}
	proto, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	secs := strings.TrimSuffix(want.String(), "s") + " s by default"
	if !strings.Contains(strings.Join(strings.Fields(string(proto)), " "), "`--advert-interval`, "+secs) {
		t.Errorf("docs/protocol.md does not say %q of --advert-interval", secs)
	}
}

// TestPullRefusesToOverwrite: pull --out FILE leaves an existing FILE
// alone unless --force, and says so before it joins any swarm.
func TestPullRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "mine.safetensors")
	if err := os.WriteFile(out, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := swarm.CIDOf([]byte("some adaptor")).String()
	var stdout, stderr strings.Builder
	code := run([]string{"pull", c, "--out", out, "--store", filepath.Join(dir, "store"), "--timeout", "2s"}, &stdout, &stderr)
	if code == 0 || !strings.Contains(stderr.String(), out+" exists (use --force to overwrite)") {
		t.Errorf("pull over an existing file: exit %d\n%s", code, stderr.String())
	}
	if b, _ := os.ReadFile(out); string(b) != "precious" {
		t.Errorf("the existing file was changed to %q", b)
	}
}
