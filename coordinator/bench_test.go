package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"carryon/node"
	"carryon/protocol"
	"carryon/tensor"
)

// BenchmarkSwarm measures Collect's aggregate throughput with 1..64
// in-process nodes (each its own libp2p host on loopback) whose compute is
// a fixed 50 µs per token spent asleep, so the nodes cost no CPU and the
// numbers show what the coordinator, the hosts and the wire can carry.
// One op is one chunk of 4×16 tokens (dim 128, q8, verification off).
// Ideal: nodes × 312 chunks/s.
//
// cache=disk keeps the cache in the test's temporary directory (every
// chunk's file is fsynced); cache=tmpfs puts it on /dev/shm, where fsync
// is free, to show what the loop and the hosts carry without the disk.
func BenchmarkSwarm(b *testing.B) {
	for _, cache := range []string{"disk", "tmpfs"} {
		for _, nodes := range []int{1, 4, 16, 64} {
			b.Run(fmt.Sprintf("cache=%s/nodes=%d", cache, nodes), func(b *testing.B) {
				dir := b.TempDir()
				if cache == "tmpfs" {
					if _, err := os.Stat("/dev/shm"); err != nil {
						b.Skip("no /dev/shm")
					}
					d, err := os.MkdirTemp("/dev/shm", "carryon-bench-*")
					if err != nil {
						b.Skip(err)
					}
					b.Cleanup(func() { os.RemoveAll(d) })
					dir = d
				}
				benchSwarm(b, nodes, dir)
			})
		}
	}
}

func benchSwarm(b *testing.B, nodes int, dir string) {
	{
		{
			ts := newLoopbackSwarm(b)
			for i := range nodes {
				ts.addNode(newFakeBase(ts.base, 50*time.Microsecond, honest, uint64(i)), node.Config{AdvertInterval: 250 * time.Millisecond})
			}
			c, _ := ts.coordinator(Config{MinNodes: nodes, VerifyFraction: -1, CacheDir: dir})
			seed := benchSeed.Add(1)
			ds := swarmDataset(seed, b.N, 4, 16)
			warm := swarmDataset(seed+1<<32, 2*nodes, 4, 16) // everyone joined and measured
			ctx := context.Background()
			if err := c.Collect(ctx, warm, nil); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			if err := c.Collect(ctx, ds, nil); err != nil {
				b.Fatal(err)
			}
			sec := time.Since(start).Seconds()
			b.StopTimer()
			st := c.Status()
			b.ReportMetric(float64(b.N)/sec, "chunks/s")
			b.ReportMetric(float64(st.Job.Tokens)/sec, "tokens/s")
			b.ReportMetric(float64(st.Job.BytesReceived)/sec/1e6, "MB/s")
			b.ReportMetric(float64(b.N)/sec/(float64(nodes)*1e6/(50*64)), "efficiency")
		}
	}
}

var benchSeed atomic.Uint64

// constBase returns one precomputed (T, dim) block: no compute at all, so
// BenchmarkEmbedStream measures the node's codec, the wire and the
// coordinator's checks.
type constBase struct {
	info protocol.BaseInfo
	x    []float32
}

func (c *constBase) Info() protocol.BaseInfo { return c.info }
func (c *constBase) Forward(ids []int32, layers []int) ([][]float32, error) {
	out := make([][]float32, len(layers))
	for i := range out {
		out[i] = c.x[:len(ids)*c.info.Dim]
	}
	return out, nil
}

// BenchmarkEmbedStream: end-to-end embeddings (tokens) per second over one
// loopback stream, Qwen2.5-0.5B's width (896), chunks of 16×128 tokens,
// one lease at a time; and the bytes per token each codec puts on the
// wire.
func BenchmarkEmbedStream(b *testing.B) {
	const dim, seqs, seqLen = 896, 16, 128
	h := sha256.Sum256([]byte("stream bench base"))
	info := protocol.BaseInfo{Name: "bench", WeightsHash: hex.EncodeToString(h[:]), Arch: "qwen2", Dim: dim, Layers: 24, Vocab: 151936}
	rng := rand.New(rand.NewPCG(1, 1))
	x := make([]float32, seqLen*dim)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	for _, name := range []string{"q8", "q4", "q4g64", "q2", "bf16"} {
		b.Run(name, func(b *testing.B) {
			ts := newLoopbackSwarm(b)
			tn := ts.addNode(&constBase{info: info, x: x}, node.Config{Codecs: []string{name}})
			codec, _ := tensor.ParseCodec(name)
			job := embedJob{ID: "b0", Base: info.WeightsHash, Dim: dim, Layers: []int{-1}, Codec: codec}
			ds := swarmDataset(9, 1, seqs, seqLen)
			ch := ds.Train[0]
			ctx := context.Background()
			var bytes int64
			b.ResetTimer()
			for b.Loop() {
				entries, _, err := embedChunk(ctx, ts.coordH, tn.h.ID(), job, ch, func([][]Entry) (bool, error) { return false, nil })
				if err != nil {
					b.Fatal(err)
				}
				bytes += payloadBytes(entries)
			}
			sec := b.Elapsed().Seconds()
			tokens := float64(b.N * seqs * seqLen)
			b.ReportMetric(tokens/sec, "embeddings/s")
			b.ReportMetric(float64(bytes)/sec/1e6, "MB/s")
			b.ReportMetric(float64(codec.EncodedSize(1, dim)), "bytes/token")
		})
	}
}
