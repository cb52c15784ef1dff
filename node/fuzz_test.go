package node

import (
	"context"
	"encoding/binary"
	"io"
	"runtime"
	"testing"
	"time"

	"carryon/protocol"
)

// FuzzEmbedStream writes arbitrary bytes at a live node's embedding
// handler (after go-libp2p's autonatv2 FuzzServerDialRequest): the node
// must not panic, must answer within its caps, and must not allocate in
// proportion to lengths the input merely claims.
func FuzzEmbedStream(f *testing.F) {
	b := newTestBase()
	c, n := pair(f, b, Config{JobTimeout: 5 * time.Second})
	req := request(b)
	f.Add(mustFrame(f, req))
	f.Add(mustFrame(f, req)[:20])
	f.Add([]byte{})
	f.Add([]byte{byte(protocol.TypeEmbedRequest), 1, 0, 0x80, 0, 0}) // claims 8 MiB, sends none
	big := []byte{byte(protocol.TypeEmbedRequest), 1, 0, 0, 0, 0, 0xdf, 0xff, 0xff, 0xff, 0xff}
	binary.BigEndian.PutUint32(big[2:], 5)
	f.Add(big) // a msgpack map claiming 2^32 entries
	f.Add(append(mustFrame(f, req), mustFrame(f, &protocol.Ack{V: protocol.Version, JobID: req.JobID, ChunkID: req.ChunkID, OK: true})...))
	f.Add([]byte{byte(protocol.TypeEmbedRequest), 1, 0, 0, 0, 3, 0x81, 0xa1, 'v'})
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := c.NewStream(ctx, n.h.ID(), protocol.EmbedProtocol)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Reset()
		s.SetDeadline(time.Now().Add(5 * time.Second))
		s.Write(data)
		s.CloseWrite()
		// Whatever comes back must be frames within their caps.
		for {
			m, err := protocol.ReadFrame(io.LimitReader(s, 1<<20))
			if err != nil {
				break
			}
			if _, ok := m.(*protocol.EmbedResult); !ok {
				if _, ok := m.(*protocol.EmbedDone); !ok {
					if _, ok := m.(*protocol.Error); !ok {
						t.Fatalf("unexpected %v from the node", m.Type())
					}
				}
			}
		}
		runtime.ReadMemStats(&after)
		// Both hosts share this process; 8 MiB covers libp2p's own
		// buffers and is far below the 8 MiB·k a trusted length would cost.
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20+64*uint64(len(data)) {
			t.Fatalf("%d input bytes made the process allocate %d bytes", len(data), grew)
		}
	})
}
