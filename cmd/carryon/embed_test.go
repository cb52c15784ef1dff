package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"carryon/model"
	"carryon/tokenizer"
)

// TestEmbedAndBenchForward runs `embed` on a small random checkpoint with
// the byte vocabulary and checks the JSON against Base.Forward, then runs
// benchForward on it and checks its JSON line.
func TestEmbedAndBenchForward(t *testing.T) {
	dir := t.TempDir()
	mdir := filepath.Join(dir, "m")
	cfg := model.DemoConfig()
	cfg.Layers = 2
	if err := model.WriteRandomBase(mdir, cfg, 4); err != nil {
		t.Fatal(err)
	}
	in, out := filepath.Join(dir, "in.json"), filepath.Join(dir, "out.json")
	os.WriteFile(in, []byte(`["hi there", "x"]`), 0o644)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"embed", "--model", mdir, "--text", in, "--layers", "final,0,2", "--out", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("embed exit %d: %s", code, stderr.String())
	}
	var res embedOutput
	data, _ := os.ReadFile(out)
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatal(err)
	}
	b, err := model.LoadBase(mdir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if len(res.Sequences) != 2 || res.Dim != cfg.Dim || len(res.Layers) != 3 || res.WeightsHash != b.WeightsHash {
		t.Fatalf("output: %d sequences, dim %d, layers %v, hash %s", len(res.Sequences), res.Dim, res.Layers, res.WeightsHash)
	}
	// embed runs its sequences as one batch: exactly ForwardBatch's numbers.
	var texts [][]int32
	for _, txt := range []string{"hi there", "x"} {
		texts = append(texts, tokenizer.ByteTokenizer{}.Encode(txt))
	}
	batch, err := b.ForwardBatch(texts, []int{model.FinalLayer, 0, 2})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range res.Sequences {
		want := batch[i]
		for l := range want {
			if len(s.Hidden[l]) != len(s.Tokens) {
				t.Fatalf("seq %d layer %d: %d rows for %d tokens", i, l, len(s.Hidden[l]), len(s.Tokens))
			}
			for p, row := range s.Hidden[l] {
				for j, v := range row {
					if v != want[l][p*cfg.Dim+j] {
						t.Fatalf("seq %d layer %s pos %d dim %d: %g, want %g", i, res.Layers[l], p, j, v, want[l][p*cfg.Dim+j])
					}
				}
			}
		}
	}
	if code := run([]string{"embed", "--model", mdir, "--tokens", in, "--out", out}, &stdout, &stderr); code == 0 {
		t.Error("embed accepted strings as --tokens")
	}
	stdout.Reset()
	if err := benchForward(context.Background(), []string{"--model", mdir, "--tokens", "32", "--threads", "1", "--runs", "1", "--decode", "3"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	var br forwardBenchResult
	if err := json.Unmarshal(stdout.Bytes(), &br); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	if br.Tokens != 32 || br.TokensPerSec <= 0 || br.PeakRSSBytes <= 0 || br.ModelBytes <= 0 || len(br.TimesS) != 1 || len(br.CPUS) != 1 ||
		br.Decode != 3 || br.DecodeTokensPerSec <= 0 || br.Kernel == "" {
		t.Errorf("bench forward: %+v", br)
	}
}

// TestBenchTrainMemoryLean runs `bench train --memory-only` on a tiny
// shape with the head memory-mapped as Q8_0, 8-bit moments and fused
// steps, and checks the report: private and file-backed memory, the head
// format and one loss per step.
func TestBenchTrainMemoryLean(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "train", "--memory-only", "--width", "32", "--layers", "1", "--base-dim", "64", "--vocab", "500",
		"--seq", "16", "--batch", "2", "--steps", "3", "--threads", "1", "--head", "q8_0", "--optim8", "--fused"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var r struct {
		Private       float64 `json:"private_mib"`
		FileMiB       float64 `json:"file_mib"`
		Head          string
		Fused, Optim8 bool
		Losses        []float64
	}
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	if r.Private <= 0 || r.FileMiB <= 0 || r.Head != "Q8_0" || !r.Fused || !r.Optim8 || len(r.Losses) != 3 {
		t.Errorf("bench train --memory-only: %s", stdout.String())
	}
	if code := run([]string{"bench", "train", "--memory-only", "--fused"}, &stdout, &stderr); code == 0 {
		t.Error("--fused with the float32 head was accepted")
	}
}
