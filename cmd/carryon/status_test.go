package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"carryon/coordinator"
)

// TestStatusCommand prints a dashboard's status as text, and passes a
// dashboard's JSON error through.
func TestStatusCommand(t *testing.T) {
	loss, val, base := 2.34567, 2.5, 3.0
	st := coordinator.DashboardStatus{Phase: "training",
		Coordinator: coordinator.CoordinatorInfo{Peer: "12D3KooWCoord", Base: strings.Repeat("ab", 32), Codec: "q8", Layers: []int{-1}},
		Job:         coordinator.JobView{ID: "0a0b", Total: 40, Done: 30, Leased: 4, Left: 10, CacheHits: 12, BytesReceived: 3 << 20},
		Nodes: []coordinator.NodeView{{Peer: "12D3KooWAlice", Device: "cuda", TokensPerSec: 900, Leases: 1, Cap: 2, Chunks: 18, Eligible: true, InJob: true},
			{Peer: "12D3KooWMallory", Device: "cpu", Banned: true, BanReason: "outvoted", InJob: true}},
		Training: coordinator.TrainingView{Step: 50, TotalSteps: 200, Loss: &loss, LR: 1e-3, TokensPerSec: 4000, ValLoss: &val, ValBaseLoss: &base},
		Versions: []coordinator.VersionView{{VersionRecord: coordinator.VersionRecord{CID: "bafkexample", Step: 200, Size: 2048,
			UnixMilli: time.Now().Add(-time.Minute).UnixMilli()}}}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/status" {
			w.WriteHeader(404)
			w.Write([]byte(`{"error": "unknown API path \"` + r.URL.Path + `\""}`))
			return
		}
		json.NewEncoder(w).Encode(st)
	}))
	defer srv.Close()
	var out, errb bytes.Buffer
	if err := runStatus(context.Background(), []string{"--coordinator", srv.URL}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"coordinator 12D3KooWCoord: training",
		"job 0a0b: 30/40 chunks done (75%), 4 leased, 0 verifying, 10 left; 12 cache hits; 3.0 MiB received",
		"nodes: 2 (1 eligible, 1 banned)",
		"banned: outvoted",
		"training: step 50/200, loss 2.3457, lr 0.001, 4000 tokens/s; validation 2.5000 (base alone 3.0000)",
		"adaptor: bafkexample (step 200, 2.0 KiB, published 1m",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
	err := runStatus(context.Background(), []string{"--coordinator", srv.URL + "/nested"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), `unknown API path "/nested/api/status"`) {
		t.Errorf("error from a 404: %v", err)
	}
}
