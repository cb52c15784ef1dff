package main

import (
	"bytes"
	"encoding/json"
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
// and checks the adaptor's sources; generate --mix runs it (both bases in
// lockstep) as carryon.Generate does, and refuses it without its second
// base or with another one; a base with another tokenizer is refused
// before anything runs.
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

	// generate --mix default runs the mixture as carryon.Generate does.
	tiny, err := model.Open("tiny", model.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tiny.Base.Close()
	def, err := model.Open("default", model.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer def.Base.Close()
	const prompt = "What is 4+8?"
	want, err := carryon.Generate(tiny.Base, tiny.Tokenizer, []*carryon.Model{co}, 1, prompt,
		carryon.GenerateOptions{MaxTokens: 12, Bridge: "q8", Mix: []*model.Base{def.Base}})
	if err != nil {
		t.Fatal(err)
	}
	gen := []string{"generate", "--model", "tiny", "--adaptor", out, "--prompt", prompt, "--max-tokens", "12", "--bridge", "q8", "--stats=false"}
	stdout.Reset()
	stderr.Reset()
	if code := run(append(gen, "--mix", "default"), &stdout, &stderr); code != 0 {
		t.Fatalf("generate --mix: exit %d\n%s", code, stderr.String())
	}
	if got := strings.TrimSuffix(stdout.String(), "\n"); got != want.Text {
		t.Errorf("generate --mix default: %q, carryon.Generate with both bases %q", got, want.Text)
	}
	// eval --mix scores it through the same inference path.
	stdout.Reset()
	stderr.Reset()
	ev := []string{"eval", "--model", "tiny", "--mix", "default", "--adaptor", out, "--data", data, "--limit", "3", "--max-tokens", "8", "--bridge", "q8", "--json", "--cache", filepath.Join(dir, "cache")}
	if code := run(ev, &stdout, &stderr); code != 0 {
		t.Fatalf("eval --mix: exit %d\n%s", code, stderr.String())
	}
	var rep evalReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil || rep.Examples != 3 || !(rep.Adaptor.Loss > 0) || rep.Adaptor.Loss == rep.Base.Loss {
		t.Errorf("eval --mix: %+v (%v), want 3 examples scored with and without the mixture", rep, err)
	}
	h := def.Base.WeightsHash[:carryon.MixHashLen]
	for _, c := range []struct {
		mix  []string
		want string
	}{
		{nil, "reads base " + h + ", which was not given (no further base was given)"},
		{[]string{"--mix", "tiny"}, "reads base " + h + ", which was not given (the further bases given are " + tiny.Base.WeightsHash[:carryon.MixHashLen] + ")"},
	} {
		stdout.Reset()
		stderr.Reset()
		if code := run(append(gen, c.mix...), &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), c.want) || !strings.Contains(stderr.String(), "--mix") {
			t.Errorf("generate %v: exit %d, stderr %q; want a refusal saying %q and naming --mix", c.mix, code, stderr.String(), c.want)
		}
	}

	// serve refuses the mixture without its second base, and a second
	// base that nothing it serves can read.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--adaptor", out}, "reads base " + h + ", which was not given"},
		{[]string{"--mix", "default", "--on-demand=false"}, "--mix: base " + h + " is read by none of the adaptors given"},
	} {
		stdout.Reset()
		stderr.Reset()
		args := append([]string{"serve", "--model", "tiny", "--http", "127.0.0.1:0", "--store", filepath.Join(dir, "store")}, c.args...)
		if code := run(args, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("serve %v: exit %d, stderr %q; want a refusal saying %q", c.args, code, stderr.String(), c.want)
		}
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
