package coordinator

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"carryon/node"
)

// TestChurn kills a third of 8 nodes at random moments of a job: the job
// completes, and every chunk enters the cache exactly once with the
// honest embeddings.
func TestChurn(t *testing.T) {
	ts := newTestSwarm(t)
	const nodes, kills, seqs = 8, 3, 4
	ds := swarmDataset(1, 240, seqs, 16) // 240 chunks of 64 tokens
	rng := rand.New(rand.NewPCG(42, 1))
	victims := rng.Perm(nodes)[:kills]
	// Victim i dies once the swarm has run at[i] forward passes (one per
	// sequence): between a tenth and seven tenths of the job's sequences,
	// so every moment comes while work is left.
	at := make([]int64, kills)
	for i := range at {
		at[i] = int64(seqs * (len(ds.Train)/10 + rng.IntN(len(ds.Train)*6/10)))
	}
	due := make(chan int, kills) // victims whose moment has come
	var forwards atomic.Int64
	for i := range nodes {
		fb := newFakeBase(ts.base, 150*time.Microsecond, honest, uint64(i))
		fb.onForward = func() {
			n := forwards.Add(1)
			for i, a := range at {
				if n == a {
					due <- i
				}
			}
		}
		ts.addNode(fb, node.Config{})
	}
	c, stores := ts.coordinator(Config{MinNodes: nodes})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case i := <-due:
				st := c.Status()
				t.Logf("killing node %d after %d forward passes, %d/%d chunks done (%d leases in flight)", victims[i], at[i], st.Job.Done, st.Job.Total, st.Job.Leased)
				ts.nodes[victims[i]].kill()
			}
		}
	}()
	start := time.Now()
	if err := c.Collect(ctx, ds, nil); err != nil {
		t.Fatal(err)
	}
	cancel()
	st := c.Status()
	killed := 0
	for _, n := range ts.nodes {
		if n.killed.Load() {
			killed++
		}
	}
	if killed != kills {
		t.Fatalf("only %d of %d nodes were killed before the job ended", killed, kills)
	}
	for _, ch := range ds.Train {
		if n := stores.get(ch.ID); n != 1 {
			t.Fatalf("chunk %s entered the cache %d times", short(ch.ID), n)
		}
	}
	checkCache(t, c, ds, true)
	if st.Job.Done != st.Job.Total || !st.Job.Finished || st.Job.Verify.Bans != 0 {
		t.Fatalf("status: %+v", st.Job)
	}
	t.Logf("churn: %d chunks in %v with %d of %d nodes killed: %d leases reassigned, %d speculative, verified %d (sampled %d), extra compute %.3f",
		st.Job.Total, time.Since(start).Round(time.Millisecond), kills, nodes, st.Job.Reassigned, st.Job.Speculative,
		st.Job.Verify.Verified, st.Job.Verify.Sampled, st.Job.ExtraComputeFraction)
	t.Logf("warnings: %v", ts.warns.msgs)
}
