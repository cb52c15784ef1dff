package main

import (
	"bufio"
	"carryon/internal/testenv"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildBinary compiles carryon into dir.
func buildBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "carryon")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is a carryon process whose stdout lines are watched.
type proc struct {
	cmd   *exec.Cmd
	lines chan string
	log   *testenv.Log // stderr, safe to read while the process writes
}

func start(t *testing.T, env []string, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	return startCmd(t, cmd)
}

// startCmd starts a prepared carryon command (its Dir and Env set) and
// watches its stdout lines; cleanup interrupts it.
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	args := cmd.Args[1:]
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, lines: make(chan string, 1024), log: new(testenv.Log)}
	cmd.Stderr = p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("%s stderr:\n%s", args[0], p.log.String())
		}
	})
	return p
}

// waitLine returns the rest of the first stdout line that starts with prefix.
func (p *proc) waitLine(t *testing.T, ctx context.Context, prefix string) string {
	t.Helper()
	return strings.TrimSpace(testenv.WaitLine(t, ctx, p.lines, p.cmd.Args[1], prefix))
}

// TestProcessesEndToEnd runs the loop across separate processes on
// loopback: a coordinator and a node started by hand, and a pull from a
// third process, all in a private swarm.
func TestProcessesEndToEnd(t *testing.T) {
	dir, bin, key, env := swarmSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	coord := start(t, env, bin, "coordinator", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0",
		"--cache", filepath.Join(dir, "coord"), "--steps", "40", "--serve")
	addr := coord.waitLine(t, ctx, "listening on ")
	start(t, env, bin, "node", "--key", key, "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", addr,
		"--advert-interval", "300ms")
	cid := coord.waitLine(t, ctx, "adaptor ")

	out := filepath.Join(dir, "pulled.safetensors")
	pullCmd := exec.CommandContext(ctx, bin, "pull", cid, "--key", key, "--from", addr, "--out", out, "--store", filepath.Join(dir, "puller"))
	pullCmd.Env = append(os.Environ(), env...)
	res, err := pullCmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, res)
	}
	if !strings.Contains(string(res), "hash verified") {
		t.Fatalf("pull output does not confirm the hash:\n%s", res)
	}
	if st, err := os.Stat(out); err != nil || st.Size() == 0 {
		t.Fatalf("pulled file: %v", err)
	}

	// A peer without the swarm key cannot pull.
	other := filepath.Join(dir, "other.key")
	exec.Command(bin, "keygen", "--out", other).Run()
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	pullCmd = exec.CommandContext(cctx, bin, "pull", cid, "--key", other, "--from", addr, "--timeout", "5s",
		"--store", filepath.Join(dir, "outsider"), "--out", filepath.Join(dir, "outsider.safetensors"))
	pullCmd.Env = append(os.Environ(), env...)
	res, err = pullCmd.CombinedOutput()
	if err == nil {
		t.Fatalf("pull with the wrong swarm key succeeded:\n%s", res)
	}
}

// TestHelp checks that every subcommand answers --help with its flags.
func TestHelp(t *testing.T) {
	for name := range commands {
		var out, errb strings.Builder
		if code := run([]string{name, "--help"}, &out, &errb); code != 0 {
			t.Errorf("%s --help: exit %d\n%s", name, code, errb.String())
		}
		if !strings.Contains(errb.String(), "Usage: carryon "+name) {
			t.Errorf("%s --help does not print its usage:\n%s", name, errb.String())
		}
	}
	var out, errb strings.Builder
	if code := run([]string{"nonsense"}, &out, &errb); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
}

// swarmSetup is what every multi-process test starts with: a temporary
// directory, the binary built into it, a private swarm key made by
// `carryon keygen`, and an environment whose cache lives in the directory.
// It skips the test with -short.
func swarmSetup(t *testing.T) (dir, bin, key string, env []string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir = t.TempDir()
	bin = buildBinary(t, dir)
	env = []string{"XDG_CACHE_HOME=" + filepath.Join(dir, "xdg")}
	key = filepath.Join(dir, "swarm.key")
	if out, err := exec.Command(bin, "keygen", "--out", key).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	return dir, bin, key, env
}
