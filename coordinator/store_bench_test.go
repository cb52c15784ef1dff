package coordinator

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkStoreGroupCommit: the state store's share of a finished chunk,
// apart from the scheduler: W leases in flight at once, each writing its
// lease record (durable before the node hears of it) and then its chunk
// record with the lease deleted (durable before the node's Ack), through
// the group commit with the default delay (5 ms) and batch (256, and a
// larger one for a large swarm), in the
// test's temporary directory (a real disk: each group is one syncfs and
// one bbolt fsync). The payload files are not written here. One op is one
// chunk; CPU is the whole process's.
func BenchmarkStoreGroupCommit(b *testing.B) {
	for _, bw := range [][2]int{{256, 16}, {256, 256}, {256, 4096}, {4096, 4096}} {
		batch, w := bw[0], bw[1]
		b.Run(fmt.Sprintf("batch=%d/inflight=%d", batch, w), func(b *testing.B) {
			dir := b.TempDir()
			cfg := Config{CommitBatch: batch}.withDefaults()
			st, _, err := openState(filepath.Join(dir, "state.db"), dir, cfg.CommitBatch, cfg.CommitDelay)
			if err != nil {
				b.Fatal(err)
			}
			defer st.close()
			jobs := make(chan int, w)
			var wg sync.WaitGroup
			var failed error
			var mu sync.Mutex
			for range w {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range jobs {
						key := fmt.Appendf(nil, "job/%064x", i)
						err := st.groupWrite(func(tx *bolt.Tx) error {
							return putJSON(tx.Bucket(bLeases), key, leaseRecord{Node: "12D3KooWnode", UnixMilli: time.Now().UnixMilli()})
						}, false)
						if err == nil {
							rec := chunkRecord{Node: "12D3KooWnode", UnixMilli: time.Now().UnixMilli()}
							err = st.groupWrite(func(tx *bolt.Tx) error {
								if err := putJSON(tx.Bucket(bChunks), fmt.Appendf(nil, "%064x/final/q8", i), rec); err != nil {
									return err
								}
								return tx.Bucket(bLeases).Delete(key)
							}, true)
						}
						if err != nil {
							mu.Lock()
							failed = err
							mu.Unlock()
						}
					}
				}()
			}
			cpu0, okCPU := processCPU()
			commits0, grouped0 := st.commits, st.grouped
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				jobs <- i
			}
			close(jobs)
			wg.Wait()
			sec := time.Since(start).Seconds()
			b.StopTimer()
			if failed != nil {
				b.Fatal(failed)
			}
			b.ReportMetric(float64(b.N)/sec, "chunks/s")
			if okCPU {
				cpu1, _ := processCPU()
				b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(b.N), "cpu-µs/chunk")
			}
			if n := st.commits - commits0; n > 0 {
				b.ReportMetric(float64(st.grouped-grouped0)/float64(n), "writes/commit")
			}
		})
	}
}
