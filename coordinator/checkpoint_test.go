package coordinator

import (
	"bytes"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"

	"carryon/carryon"
	"carryon/tensor"
)

// tinyCarryOn is a small carry-on with an optimiser that has taken steps
// (so that parameters and moments are all non-trivial).
func tinyCarryOn(t testing.TB, seed uint64) (*carryon.Model, *carryon.Optimizer) {
	t.Helper()
	cfg := carryon.DefaultConfig(8, 16)
	cfg.Width, cfg.Layers, cfg.Heads, cfg.FFN, cfg.MaxSeq = 8, 1, 2, 8, 8
	co, err := carryon.New(cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	opt, err := carryon.NewOptimizer(co, carryon.DefaultOptimConfig(10))
	if err != nil {
		t.Fatal(err)
	}
	g := make([]float32, len(co.Params))
	for s := range 3 {
		for i := range g {
			g[i] = float32(math.Sin(float64(i*(s+1)) + float64(seed)))
		}
		opt.Step(g)
	}
	return co, opt
}

func testCheckpoint() Checkpoint {
	return Checkpoint{RunKey: strings.Repeat("ab", 32), Step: 3, Epoch: 2, Next: 5, Loss: 1.0 / 3,
		Evals: []EvalInfo{{Step: 2, Loss: 2.0 / 7, BaseLoss: math.Pi, Tokens: 11}}}
}

func TestCheckpointRoundTrip(t *testing.T) {
	co, opt := tinyCarryOn(t, 1)
	ck := testCheckpoint()
	data, err := MarshalCheckpoint(ck, co, opt)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := MarshalCheckpoint(ck, co, opt)
	if !bytes.Equal(data, again) {
		t.Error("equal inputs gave different bytes")
	}
	co2, opt2 := tinyCarryOn(t, 2) // same shape, other values
	got, err := LoadCheckpoint(data, co2, opt2)
	if err != nil {
		t.Fatal(err)
	}
	if got.RunKey != ck.RunKey || got.Step != ck.Step || got.Epoch != ck.Epoch || got.Next != ck.Next ||
		got.Loss != ck.Loss || !slices.Equal(got.Evals, ck.Evals) {
		t.Errorf("state: got %+v, want %+v", got, ck)
	}
	for _, p := range []struct {
		name      string
		got, want []float32
	}{{"params", co2.Params, co.Params}, {"M", opt2.M, opt.M}, {"V", opt2.V, opt.V}} {
		if i := sameBits(p.got, p.want); i >= 0 {
			t.Errorf("%s[%d]: got %v, want %v", p.name, i, p.got[i], p.want[i])
		}
	}
	if opt2.Steps != ck.Step {
		t.Errorf("optimiser steps: got %d, want %d", opt2.Steps, ck.Step)
	}
	if got.Best != nil {
		t.Errorf("a checkpoint without a best pass gave one: %v", got.Best)
	}

	// KeepBest's record goes with it: parameters, step and loss.
	ck.Best, ck.BestStep, ck.BestLoss = slices.Clone(opt.M), 2, 2.0/7
	if data, err = MarshalCheckpoint(ck, co, opt); err != nil {
		t.Fatal(err)
	}
	if got, err = LoadCheckpoint(data, co2, opt2); err != nil {
		t.Fatal(err)
	}
	if got.BestStep != 2 || got.BestLoss != ck.BestLoss || sameBits(got.Best, ck.Best) >= 0 {
		t.Errorf("best pass: step %d loss %v, want %d %v (parameters equal: %v)", got.BestStep, got.BestLoss, ck.BestStep, ck.BestLoss, sameBits(got.Best, ck.Best) < 0)
	}
	ck.BestStep = 4
	if _, err := MarshalCheckpoint(ck, co, opt); err == nil || !strings.Contains(err.Error(), "best pass") {
		t.Errorf("best pass after the last step: err %v", err)
	}
	for _, c := range []struct{ k, v, want string }{{"best_step", "9", `best_step "9"`}, {"best_loss", "NaN", `best_loss "NaN"`}} {
		bad := rewrite(t, data, func(vs []tensor.View, md map[string]string) []tensor.View { md[c.k] = c.v; return vs })
		if _, err := LoadCheckpoint(bad, co2, opt2); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %s: err %v, want %q", c.k, c.v, err, c.want)
		}
	}
	noBest := rewrite(t, data, func(vs []tensor.View, _ map[string]string) []tensor.View {
		return slices.DeleteFunc(vs, func(v tensor.View) bool { return strings.HasPrefix(v.Name, "best/") })
	})
	if _, err := LoadCheckpoint(noBest, co2, opt2); err == nil || !strings.Contains(err.Error(), `"best/`) {
		t.Errorf("best_step without best/ tensors: err %v", err)
	}
}

// rewrite re-encodes a checkpoint after edit changes its tensors or
// metadata.
func rewrite(t *testing.T, data []byte, edit func(views []tensor.View, md map[string]string) []tensor.View) []byte {
	t.Helper()
	st, err := tensor.ParseSafetensors(data)
	if err != nil {
		t.Fatal(err)
	}
	views := st.Views()
	for i := range views {
		views[i].Data = bytes.Clone(views[i].Data)
	}
	md := maps.Clone(st.Meta)
	out, err := tensor.MarshalSafetensors(edit(views, md), md)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLoadCheckpointRejects(t *testing.T) {
	co, opt := tinyCarryOn(t, 1)
	data, err := MarshalCheckpoint(testCheckpoint(), co, opt)
	if err != nil {
		t.Fatal(err)
	}
	var name string // a matrix, so that flattening it changes its shape
	for _, t := range co.Tensors() {
		if len(t.Shape) == 2 && name == "" {
			name = t.Name
		}
	}
	setMeta := func(k, v string) func([]tensor.View, map[string]string) []tensor.View {
		return func(vs []tensor.View, md map[string]string) []tensor.View { md[k] = v; return vs }
	}
	otherCfg := co.Config
	otherCfg.Width = 16
	otherJSON, _ := jsonString(otherCfg)
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"truncated", data[:len(data)-3], "safetensors"},
		{"format", rewrite(t, data, setMeta("format", "carryon-adaptor")), `format "carryon-adaptor"`},
		{"version", rewrite(t, data, setMeta("version", "9")), `version "9"`},
		{"config", rewrite(t, data, setMeta("config", otherJSON)), "differs from the run's"},
		{"step", rewrite(t, data, setMeta("step", "-1")), `step "-1"`},
		{"loss", rewrite(t, data, setMeta("loss", "x")), `loss "x"`},
		{"evals", rewrite(t, data, setMeta("evals", "{")), "evals"},
		{"missing", rewrite(t, data, func(vs []tensor.View, _ map[string]string) []tensor.View {
			return slices.DeleteFunc(vs, func(v tensor.View) bool { return v.Name == "adam.v/"+name })
		}), `tensor "adam.v/` + name + `" is missing`},
		{"shape", rewrite(t, data, func(vs []tensor.View, _ map[string]string) []tensor.View {
			for i, v := range vs {
				if v.Name == "param/"+name {
					vs[i].Shape = []int{v.Numel()}
				}
			}
			return vs
		}), `tensor "param/` + name + `" is F32`},
		{"dtype", rewrite(t, data, func(vs []tensor.View, _ map[string]string) []tensor.View {
			for i, v := range vs {
				if v.Name == "adam.m/"+name {
					vs[i].DType, vs[i].Data = tensor.I32, v.Data
				}
			}
			return vs
		}), `tensor "adam.m/` + name + `" is I32`},
		{"extra", rewrite(t, data, func(vs []tensor.View, _ map[string]string) []tensor.View {
			return append(vs, tensor.F32View("param/stray", []float32{1}, 1))
		}), `unexpected tensor "param/stray"`},
		{"nan", rewrite(t, data, func(vs []tensor.View, _ map[string]string) []tensor.View {
			for i, v := range vs {
				if v.Name == "param/"+name {
					f := make([]float32, v.Numel())
					f[len(f)-1] = float32(math.NaN())
					vs[i] = tensor.F32View(v.Name, f, v.Shape...)
				}
			}
			return vs
		}), `tensor "param/` + name + `"[`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			co2, opt2 := tinyCarryOn(t, 2)
			before, m, v := slices.Clone(co2.Params), slices.Clone(opt2.M), slices.Clone(opt2.V)
			_, err := LoadCheckpoint(tc.data, co2, opt2)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one containing %q", err, tc.want)
			}
			if sameBits(before, co2.Params) >= 0 || sameBits(m, opt2.M) >= 0 || sameBits(v, opt2.V) >= 0 || opt2.Steps != 3 {
				t.Error("a rejected checkpoint changed the carry-on or the optimiser")
			}
		})
	}
}

func jsonString(cfg carryon.Config) (string, error) {
	co, err := carryon.New(cfg, 1)
	if err != nil {
		return "", err
	}
	opt, _ := carryon.NewOptimizer(co, carryon.DefaultOptimConfig(1))
	b, err := MarshalCheckpoint(Checkpoint{}, co, opt)
	if err != nil {
		return "", err
	}
	st, err := tensor.ParseSafetensors(b)
	if err != nil {
		return "", err
	}
	return st.Meta["config"], nil
}

func FuzzLoadCheckpoint(f *testing.F) {
	co, opt := tinyCarryOn(f, 1)
	data, err := MarshalCheckpoint(testCheckpoint(), co, opt)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add(data[:len(data)/2])
	f.Add([]byte{})
	f.Add(make([]byte, 16))
	f.Fuzz(func(t *testing.T, b []byte) {
		co2, opt2 := tinyCarryOn(t, 2)
		ck, err := LoadCheckpoint(b, co2, opt2)
		if err != nil {
			return
		}
		if ck.Step < 0 || ck.Epoch < 0 || ck.Next < 0 || opt2.Steps != ck.Step {
			t.Fatalf("accepted an invalid position: %+v", ck)
		}
		for _, x := range co2.Params {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatal("accepted a non-finite parameter")
			}
		}
	})
}
