package coordinator

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"carryon/dataset"
	"carryon/node"
)

// TestExtraComputeFraction: the extra compute is the forward work beyond
// the useful work (tokens of the chunks stored), over the useful work. A
// job half done without a duplicate has spent nothing extra (it used to
// read −50%, and −100% before the first result).
func TestExtraComputeFraction(t *testing.T) {
	for _, c := range []struct {
		name                     string
		base, useful, work, self int64
		selfVerify               bool
		want                     float64
	}{
		{name: "nothing stored yet", base: 1000, useful: 0, work: 0, want: 0},
		{name: "half done, no duplicate", base: 1000, useful: 500, work: 500, want: 0},
		{name: "every chunk twice", base: 1000, useful: 1000, work: 2000, want: 1},
		{name: "a quarter verified, mid-job", base: 1000, useful: 400, work: 500, want: 0.25},
		{name: "coordinator's own opinions count", base: 1000, useful: 1000, work: 1000, self: 100, selfVerify: true, want: 0.1},
	} {
		l := &loop{baseTokens: c.base, tokens: c.useful, computed: c.work, selfTokens: c.self, verifyTokens: c.self}
		l.cfg.SelfVerify = c.selfVerify
		if got := l.extraFraction(); got != c.want {
			t.Errorf("%s: extra compute %v, want %v", c.name, got, c.want)
		}
	}
}

// TestCollectAllCachedIsFinished: a Collect whose every chunk is cached
// (a restart after the collection) is finished, and spent nothing extra.
func TestCollectAllCachedIsFinished(t *testing.T) {
	ts := newTestSwarm(t)
	ts.addNode(newFakeBase(ts.base, 100*time.Microsecond, honest, 0), node.Config{})
	c, _ := ts.coordinator(Config{MinNodes: 1})
	ds := swarmDataset(7, 4, 2, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for run := range 2 {
		if err := c.Collect(ctx, ds, nil); err != nil {
			t.Fatal(err)
		}
		j := c.Status().Job
		if !j.Finished || j.Done != j.Total {
			t.Errorf("run %d: finished %v, %d/%d done", run, j.Finished, j.Done, j.Total)
		}
		if j.ExtraComputeFraction < 0 || j.VerifyComputeFraction < 0 {
			t.Errorf("run %d: extra compute %v, verification %v: negative", run, j.ExtraComputeFraction, j.VerifyComputeFraction)
		}
		if run == 1 && (j.CachedAtStart != j.Total || j.ExtraComputeFraction != 0) {
			t.Errorf("second run: %d of %d cached at start, extra compute %v", j.CachedAtStart, j.Total, j.ExtraComputeFraction)
		}
	}
}

// TestStatusAfterResumeAtLastStep: a restart that resumes from the
// checkpoint of the last step takes no step; status says training is
// complete, not "not started", and the step is the last one.
func TestStatusAfterResumeAtLastStep(t *testing.T) {
	f := newDashFixture(t) // 40 steps planned
	d, err := NewDashboard(f.c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	h := d.Hooks(Hooks{})
	h.Collecting(10, 10)
	h.Resumed(40)
	d.Finish(nil)
	s := d.Snapshot()
	if s.Phase != "done" || s.Training.Step != 40 || s.Training.ResumedFrom != 40 {
		t.Errorf("phase %q, training step %d resumed from %d; want done, 40, 40", s.Phase, s.Training.Step, s.Training.ResumedFrom)
	}
	var b bytes.Buffer
	WriteStatusText(&b, &s, time.Now())
	if strings.Contains(b.String(), "not started") || !strings.Contains(b.String(), "training: complete") {
		t.Errorf("status text after a resume at the last step:\n%s", b.String())
	}
}

// TestStatusCarriesDataReport: what reading the data file did to its
// records (read, used, cut, dropped, and why) reaches Status, the
// dashboard's /api/status and `carryon status`'s text.
func TestStatusCarriesDataReport(t *testing.T) {
	ts := newTestSwarm(t)
	ts.addNode(newFakeBase(ts.base, 100*time.Microsecond, honest, 0), node.Config{})
	c, _ := ts.coordinator(Config{MinNodes: 1})
	ds := swarmDataset(7, 4, 2, 8)
	ds.Report = dataset.Report{Format: "jsonl", Read: 30, Used: 27, Cut: 4, Dropped: 3, Why: map[string]int{
		"answer longer than --seq-len 8: the prompt and the answer's end were cut": 4,
		"a prompt or question without an answer: nothing to train on":              3}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.Collect(ctx, ds, nil); err != nil {
		t.Fatal(err)
	}
	ds.Report.Why["changed after Collect"] = 1 // the status keeps its own copy
	got := c.Status().Job.Data
	if got.Format != "jsonl" || got.Read != 30 || got.Used != 27 || got.Cut != 4 || got.Dropped != 3 || len(got.Why) != 2 {
		t.Fatalf("Status().Job.Data = %+v", got)
	}
	d, err := NewDashboard(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s := d.Snapshot()
	if v := s.Job.Data; v.Read != 30 || v.Used != 27 || v.Cut != 4 || v.Dropped != 3 || v.Why["a prompt or question without an answer: nothing to train on"] != 3 {
		t.Errorf("dashboard data view %+v", v)
	}
	var b bytes.Buffer
	WriteStatusText(&b, &s, time.Now())
	for _, want := range []string{"data (jsonl): 30 records read, 27 used, 4 cut to the sequence length, 3 dropped",
		"  3 × a prompt or question without an answer", "  4 × answer longer than --seq-len 8"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, b.String())
		}
	}
}
