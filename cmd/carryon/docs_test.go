package main

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"carryon/node"
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
