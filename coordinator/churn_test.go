package coordinator

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"carryon/node"
)

// TestChurn kills a third of 8 nodes at random moments of a job: the job
// completes, and every chunk enters the cache exactly once with the
// honest embeddings.
func TestChurn(t *testing.T) {
	ts := newTestSwarm(t)
	const nodes, kills = 8, 3
	for i := range nodes {
		ts.addNode(newFakeBase(ts.base, 150*time.Microsecond, honest, uint64(i)), node.Config{})
	}
	c, stores := ts.coordinator(Config{MinNodes: nodes})
	ds := swarmDataset(1, 240, 4, 16) // 240 chunks of 64 tokens
	rng := rand.New(rand.NewPCG(42, 1))
	victims := rng.Perm(nodes)[:kills]
	at := make([]int, kills) // kill victim i once this many chunks are done
	for i := range at {
		at[i] = len(ds.Train)/10 + rng.IntN(len(ds.Train)*6/10)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			st := c.Status()
			for i, v := range victims {
				if st.Job.Done >= at[i] && !ts.nodes[v].killed.Load() {
					t.Logf("killing node %d at %d/%d chunks done (%d leases in flight)", v, st.Job.Done, st.Job.Total, st.Job.Leased)
					ts.nodes[v].kill()
				}
			}
			time.Sleep(2 * time.Millisecond)
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
