package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeBindsFirst: with its port taken, `carryon serve` fails on the
// address before it opens the model (here a path that does not exist, so
// loading first would fail on the model instead).
func TestServeBindsFirst(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	err = runServe(ctx, []string{"--model", filepath.Join(t.TempDir(), "no-such-model"), "--http", ln.Addr().String(),
		"--store", t.TempDir()}, &out, &errb)
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("serve on a taken port: %v, want 'address already in use' naming %s", err, ln.Addr())
	}
}

// TestDefaultPorts: `carryon serve` and the coordinator's dashboard have
// distinct defaults, and no command in README.md or docs/ puts the
// dashboard on serve's port (README's own commands would then collide).
func TestDefaultPorts(t *testing.T) {
	if defaultServeAddr == defaultDashboardAddr {
		t.Fatalf("serve and the dashboard both default to %s", defaultServeAddr)
	}
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md")
	httpFlag := regexp.MustCompile(`--(?:http|coordinator) (?:http://)?(\S+?)[` + "`" + `\s|]`)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(data), "\n") {
			if !strings.Contains(line, "coordinator") {
				continue
			}
			for _, m := range httpFlag.FindAllStringSubmatch(line+" ", -1) {
				if m[1] == defaultServeAddr {
					t.Errorf("%s:%d puts the coordinator's dashboard on %s, `carryon serve`'s default: %s", f, i+1, m[1], line)
				}
			}
		}
	}
}

// TestChatCommand: `carryon chat` reads one message per line, answers each
// (streamed) keeping the conversation, and prints tokens/s; `generate`
// takes --top-p and --stop.
func TestChatCommand(t *testing.T) {
	old := stdin
	defer func() { stdin = old }()
	stdin = strings.NewReader("What is 2+2?\n\n/reset\nAnd 3+3?\n")
	var out, errb bytes.Buffer
	if err := runChat(context.Background(), []string{"--max-tokens", "6", "--store", t.TempDir()}, &out, &errb); err != nil {
		t.Fatalf("chat: %v\n%s", err, errb.String())
	}
	if n := strings.Count(out.String(), ">>> "); n != 5 { // two messages, the empty line, /reset, then EOF
		t.Errorf("%d prompts in %q, want 5", n, out.String())
	}
	if n := strings.Count(errb.String(), "tokens/s"); n != 2 {
		t.Errorf("%d stats lines in %q, want 2", n, errb.String())
	}
	if !strings.Contains(errb.String(), "starts over") {
		t.Errorf("/reset not acknowledged: %q", errb.String())
	}
	out.Reset()
	errb.Reset()
	if err := runGenerate(context.Background(), []string{"--prompt", "Once upon a time", "--max-tokens", "8", "--temperature", "0.8",
		"--top-p", "0.9", "--stop", "\n", "--store", t.TempDir()}, &out, &errb); err != nil {
		t.Fatalf("generate: %v\n%s", err, errb.String())
	}
	if strings.Contains(strings.TrimSuffix(out.String(), "\n"), "\n") || !strings.Contains(errb.String(), "tokens/s") {
		t.Errorf("generate --stop '\\n': %q / %q", out.String(), errb.String())
	}
	if err := runGenerate(context.Background(), []string{"--prompt", "x", "--top-p", "1.5"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "top-p") {
		t.Errorf("--top-p 1.5: %v", err)
	}
}
