package coordinator

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const goodJob = `{
  "base": "default",
  "data": "problems.jsonl",
  "cache": "/tmp/job",
  "dataset":  {"seq_len": 64, "seqs_per_chunk": 8, "val_percent": 20},
  "bridge":   {"codec": "q4", "layers": [-1, 0]},
  "carry_on": {"width": 32, "layers": 1, "alpha": 0.5},
  "train":    {"steps": 40, "batch": 4, "lr": 0.003, "warmup": 4, "eval_every": 10, "checkpoint_every": 0},
  "verify":   {"rate": 0.25},
  "swarm":    {"min_nodes": 2, "lease_timeout": "90s", "min_lease_timeout": "5s"}
}`

func TestJobFileGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "job.json")
	if err := os.WriteFile(path, []byte(goodJob), 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := LoadJobFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := j.Config()
	co := cfg.Train.CarryOn
	switch {
	case cfg.Codec != "q4" || len(cfg.Layers) != 2 || cfg.Layers[1] != 0 || cfg.CacheDir != "/tmp/job":
		t.Errorf("bridge/cache: %+v", cfg)
	case co.Width != 32 || co.Layers != 1 || co.Heads != 2 || co.FFN != 88 || co.Alpha != 0.5:
		t.Errorf("carry-on shape %+v", co)
	case cfg.Train.Steps != 40 || cfg.Train.BatchSeqs != 4 || cfg.Train.EvalEvery != 10 || cfg.Train.Optim.LR != 0.003 ||
		cfg.Train.Optim.Warmup != 4 || cfg.Train.CheckpointEvery != -1:
		t.Errorf("train %+v", cfg.Train)
	case cfg.VerifyFraction != 0.25 || cfg.MinNodes != 2 || cfg.LeaseTimeout != 90*time.Second || cfg.MinLeaseTimeout != 5*time.Second:
		t.Errorf("verify/swarm %+v", cfg)
	}
	if d := j.DataConfig(); d.SeqLen != 64 || d.SeqsPerChunk != 8 || d.ValPercent != 20 {
		t.Errorf("data config %+v", d)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the coordinator refuses the file's config: %v", err)
	}
	// The minimal file takes every default; "rate": 0 means never.
	j, err = ParseJobFile(strings.NewReader(`{"base": "default", "data": "default", "verify": {"rate": 0}}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg := j.Config(); cfg.Train.CarryOn.Width != 0 || cfg.VerifyFraction != -1 || cfg.Train.CheckpointEvery != 0 {
		t.Errorf("minimal file: %+v", cfg)
	}
}

func TestJobFileErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ edit, want string }{
		{`"train": {"steps": -3}`, "train.steps: -3 is below 1"},
		{`"train": {"batch": -1}`, "train.batch: -1 is below 1"},
		{`"train": {"lr": 2}`, "train.lr: 2 not in (0, 1)"},
		{`"train": {"steps": 10, "warmup": 11}`, "train.warmup: 11 is above train.steps 10"},
		{`"train": {"lr": 0.001, "min_lr": 0.01}`, "train.min_lr: 0.01 is above train.lr 0.001"},
		{`"train": {"checkpoint_every": -5}`, "train.checkpoint_every: -5 is below 0"},
		{`"train": {"steps": "many"}`, `train.steps: string where int is expected`},
		{`"train": {"stepz": 3}`, `unknown field "stepz"`},
		{`"colour": "blue"`, `unknown field "colour"`},
		{`"bridge": {"codec": "q9"}`, "bridge.codec: "},
		{`"bridge": {"layers": [0]}`, "bridge.layers: the first layer must be the final one (-1), got 0"},
		{`"bridge": {"layers": [-1, -2]}`, "bridge.layers[1]: shortcut layer -2 is negative"},
		{`"carry_on": {"width": 30, "heads": 4}`, "carry_on.heads: 4 heads do not split width 30"},
		{`"carry_on": {"alpha": -1}`, "carry_on.alpha: -1 not in (0, 100]"},
		{`"dataset": {"seq_len": 1}`, "dataset.seq_len: 1 is below 2"},
		{`"dataset": {"val_percent": 95}`, "dataset.val_percent: 95 is above 90"},
		{`"verify": {"rate": 1.5}`, "verify.rate: 1.5 not in [0, 1]"},
		{`"verify": {"kernel_rel": 0.5}`, "verify.kernel_rel: 0.5 not in (0, 0.1)"},
		{`"swarm": {"lease_timeout": "10ms"}`, "swarm.lease_timeout: 10ms is below 1s"},
		{`"swarm": {"lease_timeout": 30}`, `a duration is a string such as "90s"`},
		{`"swarm": {"lease_timeout": "5s", "min_lease_timeout": "10s"}`, "swarm.min_lease_timeout: 10s is above swarm.lease_timeout 5s"},
		{`"swarm": {"leases_per_node": 100}`, "swarm.leases_per_node: 100 is above 64"},
		{`"job_id": "NOT-HEX"`, `job_id: "NOT-HEX" is not 1..64 lowercase hex digits`},
	} {
		src := `{"base": "default", "data": "default", ` + tc.edit + `}`
		_, err := ParseJobFile(strings.NewReader(src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.edit, err, tc.want)
		}
	}
	for src, want := range map[string]string{
		`{"data": "x"}`:                 "base: required",
		`{"base": "x"}`:                 "data: required",
		`{"base": "x", "data": "y"} {}`: "data after the job's JSON object",
		`[1, 2]`:                        "cannot unmarshal array",
		`{"base": "x", "data": "y"`:     "unexpected EOF",
		`{"base": "x", "data": "y"` + strings.Repeat(" ", maxJobFileBytes) + "}": "larger than",
	} {
		if _, err := ParseJobFile(strings.NewReader(src)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.40q: error %v, want one containing %q", src, err, want)
		}
	}
	if _, err := LoadJobFile(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("a missing file loaded")
	}
}

// FuzzParseJobFile: no input panics, and an accepted file yields a
// configuration the coordinator accepts.
func FuzzParseJobFile(f *testing.F) {
	f.Add([]byte(goodJob))
	f.Add([]byte(`{"base": "default", "data": "default"}`))
	f.Add([]byte(`{"base": "a", "data": "b", "train": {"steps": 1e400}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := ParseJobFile(strings.NewReader(string(b)))
		if err != nil {
			return
		}
		cfg := j.Config()
		cfg.CacheDir = "x"
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted job file gives an invalid config: %v", err)
		}
		if err := j.DataConfig().Validate(); err != nil {
			t.Fatalf("accepted job file gives an invalid data config: %v", err)
		}
	})
}
