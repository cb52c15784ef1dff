package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"carryon/internal/testenv"
)

// readmeCommands returns the commands of the ```sh blocks in the README
// section that starts with heading (comments and blank lines dropped),
// each split into words (README's commands use no quoting).
func readmeCommands(t *testing.T, readme, heading string) [][]string {
	t.Helper()
	i := strings.Index(readme, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README.md has no section %q", heading)
	}
	sec := readme[i+len(heading)+2:]
	if j := strings.Index(sec, "\n## "); j >= 0 {
		sec = sec[:j]
	}
	var cmds [][]string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(sec, -1) {
		for _, line := range strings.Split(m[1], "\n") {
			if k := regexp.MustCompile(`(^|\s)#`).FindStringIndex(line); k != nil {
				line = line[:k[0]]
			}
			if f := strings.Fields(line); len(f) > 0 {
				cmds = append(cmds, f)
			}
		}
	}
	if len(cmds) == 0 {
		t.Fatalf("README.md's section %q has no commands", heading)
	}
	return cmds
}

// readmeArgs fills README's placeholders: of alternatives A|B the one
// named "default" (the sample a fresh machine has), <CID>, and the
// coordinator's address for /ip4/<coordinator-ip>/…/p2p/<id>.
func readmeArgs(t *testing.T, args []string, cid, addr string) []string {
	t.Helper()
	out := make([]string, 0, len(args))
	for _, a := range args {
		switch {
		case strings.Contains(a, "|") && !strings.HasPrefix(a, "/"):
			alts := strings.Split(a, "|")
			a = ""
			for _, x := range alts {
				if x == "default" {
					a = x
				}
			}
			if a == "" {
				t.Fatalf("README placeholder %q offers no 'default' a fresh machine can use", strings.Join(alts, "|"))
			}
		case a == "<CID>":
			a = cid
		case strings.Contains(a, "<coordinator-ip>"):
			a = addr
		case strings.Contains(a, "<") && strings.Contains(a, ">"):
			t.Fatalf("README placeholder %q is not known to this test", a)
		}
		out = append(out, a)
	}
	return out
}

// TestReadmeWalk runs README.md's commands as a new user would on a fresh
// machine, so that the docs cannot drift from the program: "Two commands"
// (the demo, through the binary that `go run` would build; `go test` is
// left out) and "Running a swarm by hand" (build, keygen, coordinator,
// node, pull), each carryon process with its own empty HOME as on its own
// machine. Only what a test on a shared machine needs is changed:
// loopback ports chosen by the OS instead of 0.0.0.0:4001, and
// --steps 30 appended to the coordinator (its default trains 300). A
// command README gains that this test does not know fails it.
func TestReadmeWalk(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs README's commands (about a minute)")
	}
	root := testenv.RepoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// env gives a carryon process a fresh HOME of its own, as on another
	// machine: no cache, no identity, no state.
	env := func(who string) []string {
		home := filepath.Join(work, "home-"+who)
		if err := os.MkdirAll(home, 0o755); err != nil {
			t.Fatal(err)
		}
		return append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME=", "XDG_CONFIG_HOME=", "XDG_STATE_HOME=")
	}
	bin := ""
	carryon := func(who string, args []string) *exec.Cmd {
		if bin == "" {
			t.Fatalf("README runs %v before building bin/carryon", args)
		}
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir, cmd.Env = work, env(who)
		return cmd
	}

	// Two commands.
	for _, c := range readmeCommands(t, readme, "## Two commands") {
		switch {
		case len(c) >= 3 && c[0] == "go" && c[1] == "test":
			// The tests: this is one of them.
		case len(c) >= 3 && c[0] == "go" && c[1] == "run" && c[2] == "./cmd/carryon":
			demo := filepath.Join(work, "demo-bin", "carryon")
			build := exec.CommandContext(ctx, "go", "build", "-o", demo, c[2])
			build.Dir = root
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go build for %v: %v\n%s", c, err, out)
			}
			cmd := exec.CommandContext(ctx, demo, c[3:]...)
			cmd.Dir, cmd.Env = root, env("demo")
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "re-hashed it: match") || !strings.Contains(string(out), "done in") {
				t.Fatalf("README's %q: %v\n%s", strings.Join(c, " "), err, out)
			}
		default:
			t.Fatalf("README's %q is not walked by this test: teach TestReadmeWalk to run it", strings.Join(c, " "))
		}
	}

	// Running a swarm by hand.
	var addr, cid string
	var coord *proc
	for _, c := range readmeCommands(t, readme, "## Running a swarm by hand") {
		line := strings.Join(c, " ")
		switch {
		case c[0] == "go" && len(c) == 5 && c[1] == "build" && c[2] == "-o" && c[3] == "bin/carryon":
			bin = filepath.Join(work, "bin", "carryon")
			cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, c[4])
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("README's %q: %v\n%s", line, err, out)
			}
		case c[0] == "bin/carryon" && len(c) > 1 && c[1] == "keygen":
			if out, err := carryon("keygen", c[1:]).CombinedOutput(); err != nil {
				t.Fatalf("README's %q: %v\n%s", line, err, out)
			}
		case c[0] == "bin/carryon" && len(c) > 1 && c[1] == "coordinator":
			args := readmeArgs(t, c[1:], "", "")
			for i, a := range args {
				if a == "--listen" && i+1 < len(args) {
					args[i+1] = "/ip4/127.0.0.1/tcp/0"
				}
			}
			coord = startCmd(t, carryon("coordinator", append(args, "--steps", "30")))
			addr = coord.waitLine(t, ctx, "listening on ")
			if !strings.Contains(addr, "/p2p/") {
				t.Fatalf("the coordinator printed %q, README promises /ip4/.../p2p/<id>", addr)
			}
		case c[0] == "bin/carryon" && len(c) > 1 && c[1] == "node":
			if addr == "" {
				t.Fatalf("README starts a node before the coordinator printed its address")
			}
			startCmd(t, carryon("node", append(readmeArgs(t, c[1:], "", addr), "--listen", "/ip4/127.0.0.1/tcp/0")))
			cid = coord.waitLine(t, ctx, "adaptor ")
		case c[0] == "bin/carryon" && len(c) > 1 && c[1] == "pull":
			if cid == "" {
				t.Fatalf("README pulls before the coordinator printed an adaptor")
			}
			out, err := carryon("pull", readmeArgs(t, c[1:], cid, addr)).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "hash verified") {
				t.Fatalf("README's %q: %v\n%s", line, err, out)
			}
			i := strings.Index(line, "--out ")
			if i < 0 {
				t.Fatalf("README's pull has no --out")
			}
			if st, err := os.Stat(filepath.Join(work, strings.Fields(line[i+6:])[0])); err != nil || st.Size() == 0 {
				t.Fatalf("README's pull left no adaptor file: %v", err)
			}
		default:
			t.Fatalf("README's %q is not walked by this test: teach TestReadmeWalk to run it", line)
		}
	}
	if cid == "" {
		t.Fatal("README's hand-run section never got an adaptor to pull")
	}
}
