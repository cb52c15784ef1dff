package service

import (
	"encoding/xml"
	"strings"
	"testing"
)

// TestFiles: each kind names the executable and every argument, quoted
// where needed; the plist is well-formed XML; an unknown kind is refused.
func TestFiles(t *testing.T) {
	args := []string{"node", "--bootstrap", "/dns4/coord.example.org/tcp/4001/p2p/12D3KooW", "--schedule", "22:00-07:00", "--model", "/home/a b/m.gguf"}
	sd, _ := File("systemd", "/usr/local/bin/carryon", args)
	if !strings.Contains(sd, `ExecStart=/usr/local/bin/carryon node --bootstrap /dns4/coord.example.org/tcp/4001/p2p/12D3KooW --schedule 22:00-07:00 --model "/home/a b/m.gguf"`) ||
		!strings.Contains(sd, "WantedBy=default.target") {
		t.Errorf("systemd unit:\n%s", sd)
	}
	ld, _ := File("launchd", "/usr/local/bin/carryon", append(args, "<&>"))
	if err := xml.Unmarshal([]byte(ld), new(struct{})); err != nil {
		t.Errorf("plist is not XML: %v\n%s", err, ld)
	}
	if !strings.Contains(ld, "<string>/home/a b/m.gguf</string>") || !strings.Contains(ld, "&lt;&amp;&gt;") {
		t.Errorf("plist arguments:\n%s", ld)
	}
	win, _ := File("windows", `C:\Program Files\carryon\carryon.exe`, args)
	if !strings.Contains(win, `schtasks /Create /TN "carryon node" /SC ONLOGON`) || !strings.Contains(win, `\"C:\Program Files\carryon\carryon.exe\" node`) ||
		!strings.Contains(win, `sc.exe create carryon-node binPath= "\"C:\Program Files\carryon\carryon.exe\" node --bootstrap`) ||
		!strings.Contains(win, `New-Service -Name carryon-node -BinaryPathName '"C:\Program Files\carryon\carryon.exe" node --bootstrap`) {
		t.Errorf("windows instructions:\n%s", win)
	}
	if _, err := File("upstart", "x", nil); err == nil {
		t.Error("unknown kind accepted")
	}
}
