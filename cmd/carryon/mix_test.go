package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"carryon/carryon"
	"carryon/model"
)

// TestTrainMix trains a carry-on on a mixture of the two embedded bases
// (tiny, with the default base's final hidden states as a second source)
// and checks the adaptor's sources; a base with another tokenizer is
// refused before anything runs.
func TestTrainMix(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data.jsonl")
	var lines bytes.Buffer
	for i := range 12 {
		fmt.Fprintf(&lines, `{"question": "What is %d+%d?", "answer": "%d+%d = <<%d+%d=%d>>%d\n#### %d"}`+"\n", i, 2*i, i, 2*i, i, 2*i, 3*i, 3*i, 3*i)
	}
	if err := os.WriteFile(data, lines.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "a.safetensors")
	var stdout, stderr bytes.Buffer
	args := []string{"train", "--model", "tiny", "--mix", "default", "--data", data, "--steps", "2", "--batch", "2", "--width", "16", "--layers", "1",
		"--seq-len", "64", "--cache", filepath.Join(dir, "cache"), "--out", out}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("train --mix: exit %d\n%s\n%s", code, stdout.String(), stderr.String())
	}
	blob, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	co, _, err := carryon.Unmarshal(blob)
	if err != nil {
		t.Fatal(err)
	}
	src := co.Config.Sources
	if len(src) != 2 || src[0].Name != "final" || src[0].Dim != 192 || !strings.HasPrefix(src[1].Name, "base:") || !strings.HasSuffix(src[1].Name, ":final") || src[1].Dim != 256 {
		t.Fatalf("adaptor sources %+v, want final (192, tiny) and base:<hash>:final (256, default)", src)
	}

	// A base with the byte tokenizer (259 tokens) cannot join.
	b, err := model.NewRandomBase(model.DemoConfig(), 3)
	if err != nil {
		t.Fatal(err)
	}
	bytesBase := filepath.Join(dir, "bytes-base")
	if err := b.SaveHF(bytesBase); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	stderr.Reset()
	args[4] = bytesBase
	if code := run(args, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), "a mixture needs one vocabulary") || !strings.Contains(stderr.String(), "4096 tokens against 259") {
		t.Fatalf("train --mix with another tokenizer: exit %d, stderr %q; want a refusal naming the vocabularies", code, stderr.String())
	}
}
