package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestSet registers a set, gathers it, and checks the names (prefixed),
// the kinds, the labels and the values; a second registration fails.
func TestSet(t *testing.T) {
	s := NewSet("carryon_test_")
	jobs := s.Desc("jobs_total", "Jobs.")
	busy := s.Desc("busy", "Busy slots by kind.", "kind")
	reg := prometheus.NewRegistry()
	if err := s.Register(reg, func(e Emit) {
		e.Counter(jobs, 3)
		e.Gauge(busy, 1, "a")
		e.Gauge(busy, 2, "b")
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(reg, func(Emit) {}); err == nil {
		t.Error("a second registration of the same set succeeded")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "/" + l.GetName() + "=" + l.GetValue()
			}
			switch mf.GetType().String() {
			case "COUNTER":
				got[key] = m.GetCounter().GetValue()
			case "GAUGE":
				got[key] = m.GetGauge().GetValue()
			default:
				t.Errorf("%s: type %v", key, mf.GetType())
			}
		}
	}
	want := map[string]float64{"carryon_test_jobs_total": 3, "carryon_test_busy/kind=a": 1, "carryon_test_busy/kind=b": 2}
	if len(got) != len(want) {
		t.Errorf("gathered %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}
