package testenv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// KuboBin returns the Kubo binary for interop tests: CARRYON_KUBO names it,
// else the one scripts/build-kubo.sh caches in
// $HOME/.cache/carryon-kubo. Without one the test is skipped (failed with
// CARRYON_REQUIRE_KUBO=1, which CI sets after building Kubo).
func KuboBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("CARRYON_KUBO")
	if bin == "" {
		home, _ := os.UserHomeDir()
		bin = filepath.Join(home, ".cache", "carryon-kubo", "ipfs-v0.43.1")
	}
	if _, err := os.Stat(bin); err != nil {
		Missing(t, "CARRYON_REQUIRE_KUBO", "no Kubo binary at %s: run scripts/build-kubo.sh $HOME/.cache/carryon-kubo (or set CARRYON_KUBO)", bin)
	}
	return bin
}

// Kubo is a Kubo repository for a test (and its daemon, once started).
type Kubo struct {
	t    testing.TB
	Bin  string
	Repo string
}

// NewKubo makes a fresh repository (profile "test": no bootstrap peers, no
// public listeners) with swarmKey (the text of a swarm.key; nil for none).
func NewKubo(t testing.TB, swarmKey []byte) *Kubo {
	t.Helper()
	k := &Kubo{t: t, Bin: KuboBin(t), Repo: filepath.Join(t.TempDir(), "kubo")}
	k.Run("init", "--profile=test")
	if swarmKey != nil {
		if err := os.WriteFile(filepath.Join(k.Repo, "swarm.key"), swarmKey, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// Cmd is an ipfs command on the repository, with LIBP2P_FORCE_PNET=1.
func (k *Kubo) Cmd(ctx context.Context, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, k.Bin, args...)
	c.Env = append(os.Environ(), "IPFS_PATH="+k.Repo, "LIBP2P_FORCE_PNET=1")
	return c
}

// Run runs an ipfs command (a minute at most) and returns its trimmed
// standard output; a failure fails the test with its standard error.
func (k *Kubo) Run(args ...string) string {
	k.t.Helper()
	out, err := k.Try(time.Minute, args...)
	if err != nil {
		k.t.Fatal(err)
	}
	return out
}

// Try runs an ipfs command for at most d and returns its trimmed standard
// output, or an error with its standard error.
func (k *Kubo) Try(d time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var stderr bytes.Buffer
	c := k.Cmd(ctx, args...)
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return "", &kuboError{args: args, err: err, stderr: stderr.String()}
	}
	return strings.TrimSpace(string(out)), nil
}

type kuboError struct {
	args   []string
	err    error
	stderr string
}

func (e *kuboError) Error() string {
	return "ipfs " + strings.Join(e.args, " ") + ": " + e.err.Error() + "\n" + e.stderr
}

// Daemon starts the daemon (stopped when the test ends) and returns its
// loopback TCP address with /p2p/ID.
func (k *Kubo) Daemon() string {
	k.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := k.Cmd(ctx, "daemon")
	out, err := c.StdoutPipe()
	if err != nil {
		k.t.Fatal(err)
	}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Start(); err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(func() { cancel(); c.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Daemon is ready") && !ok {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			k.t.Fatalf("ipfs daemon exited:\n%s", stderr.String())
		}
	case <-time.After(time.Minute):
		k.t.Fatalf("ipfs daemon not ready after a minute:\n%s", stderr.String())
	}
	var id struct {
		ID        string
		Addresses []string
	}
	if err := json.Unmarshal([]byte(k.Run("id")), &id); err != nil {
		k.t.Fatal(err)
	}
	for _, a := range id.Addresses {
		if strings.HasPrefix(a, "/ip4/127.0.0.1/tcp/") && !strings.Contains(a, "/ws") {
			return a
		}
	}
	k.t.Fatalf("Kubo has no loopback TCP address: %v", id.Addresses)
	return ""
}
