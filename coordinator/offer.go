package coordinator

import (
	"encoding/json"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	bolt "go.etcd.io/bbolt"

	"carryon/dataset"
	"carryon/protocol"
)

// offerEv is a node's ResultOffer, for the running Collect.
type offerEv struct {
	peer   peer.ID
	chunks []string
}

// handleOffer answers a node's ResultOffer (protocol.OfferProtocol): the
// offered chunks already durable are named in the reply (the node forgets
// them); the others go to the running Collect of that job, which leases
// them back to the node first.
func (c *Coordinator) handleOffer(s network.Stream) {
	defer s.Close()
	s.SetDeadline(time.Now().Add(30 * time.Second))
	offer, err := protocol.ReadExpect[*protocol.ResultOffer](s)
	if err != nil {
		s.Reset()
		return
	}
	from := s.Conn().RemotePeer()
	c.offerMu.Lock()
	ch, job := c.offerCh, c.offerJob
	c.offerMu.Unlock()
	if ch == nil || job.ID != offer.JobID {
		job = c.primary() // answer what is stored; nothing is wanted now
	}
	var stored, wanted []string
	for _, id := range offer.Chunks {
		if c.state.hasChunks(c.cacheKeys(job, &dataset.Chunk{ID: id})) {
			stored = append(stored, id)
		} else {
			wanted = append(wanted, id)
		}
	}
	if err := protocol.WriteFrame(s, &protocol.OfferReply{V: protocol.Version, JobID: offer.JobID, Stored: stored}); err != nil {
		s.Reset()
		return
	}
	if len(wanted) == 0 {
		return
	}
	if ch == nil || job.ID != offer.JobID {
		return // no such job running: the node offers again later
	}
	select {
	case ch <- offerEv{peer: from, chunks: wanted}:
	default: // the loop is busy; the node offers again
	}
}

// takeLeases reads and clears the leases recorded as in flight when the
// last run stopped, by node.
func (c *Coordinator) takeLeases() (map[peer.ID][]string, error) {
	out := map[peer.ID][]string{}
	err := c.state.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bLeases)
		var keys [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var r leaseRecord
			if json.Unmarshal(v, &r) == nil {
				if id, err := peer.Decode(r.Node); err == nil {
					out[id] = append(out[id], string(k))
				}
			}
			keys = append(keys, append([]byte(nil), k...))
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// cachedAll reports, in one read transaction, which chunks are complete.
func (c *Coordinator) cachedAll(job embedJob, chunks []*dataset.Chunk) ([]bool, error) {
	out := make([]bool, len(chunks))
	err := c.state.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bChunks)
		for i, ch := range chunks {
			out[i] = true
			for _, k := range c.cacheKeys(job, ch) {
				if b.Get(keyBytes(k)) == nil {
					out[i] = false
					break
				}
			}
		}
		return nil
	})
	return out, err
}
