package coordinator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"

	"carryon/dataset"
	"carryon/protocol"
	"carryon/swarm"
)

// Version is a published adaptor version.
type Version struct {
	CID      cid.Cid
	Size     int
	Announce *protocol.AdaptorAnnounce
}

// Publish adds the adaptor to the store as a UnixFS file and pins it (so
// bitswap serves it, to carryon peers and Kubo alike), and gossips its CID,
// parent, step and metrics, signed with the host's key.
func (c *Coordinator) Publish(ctx context.Context, res *TrainResult) (*Version, error) {
	data, err := res.CarryOn.Marshal(res.Meta)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Publish: %w", err)
	}
	id, err := c.store.AddBytes(ctx, data)
	if err != nil {
		return nil, fmt.Errorf("coordinator.Publish: store: %w", err)
	}
	if err := c.store.Pin(ctx, id, fmt.Sprintf("adaptor step %d", res.Meta.Step)); err != nil {
		return nil, fmt.Errorf("coordinator.Publish: %w", err)
	}
	ann := &protocol.AdaptorAnnounce{V: protocol.Version, CID: id.String(), Parent: res.Meta.Parent, BaseHash: res.Meta.BaseHash,
		Step: res.Meta.Step, Size: int64(len(data)), Metrics: res.Meta.Metrics, UnixMilli: time.Now().UnixMilli()}
	if c.h == nil {
		return nil, errors.New("coordinator.Publish: a coordinator without a host cannot sign or serve adaptors")
	}
	key := c.h.Peerstore().PrivKey(c.h.ID())
	if key == nil {
		return nil, errors.New("coordinator.Publish: the host has no private key to sign with")
	}
	if err := ann.Sign(key); err != nil {
		return nil, fmt.Errorf("coordinator.Publish: sign: %w", err)
	}
	if c.topics != nil {
		if err := swarm.Publish(ctx, c.topics.Adaptors, ann); err != nil {
			return nil, fmt.Errorf("coordinator.Publish: gossip: %w", err)
		}
	}
	rec := VersionRecord{CID: id.String(), Parent: res.Meta.Parent, BaseHash: res.Meta.BaseHash, DataHash: res.Meta.DataHash,
		Step: res.Meta.Step, Size: len(data), Metrics: res.Meta.Metrics, UnixMilli: ann.UnixMilli}
	if err := c.recordVersion(rec); err != nil {
		return nil, fmt.Errorf("coordinator.Publish: %w", err)
	}
	c.log.Info("adaptor published", "adaptor", id.String(), "bytes", len(data), "step", res.Meta.Step)
	return &Version{CID: id, Size: len(data), Announce: ann}, nil
}

// Run collects the embeddings of ds, trains a carry-on on them and
// publishes it: the whole job. Hooks may be nil.
//
// Every stage resumes from disk: cached chunks are not leased again, and
// training continues from its newest checkpoint.
func (c *Coordinator) Run(ctx context.Context, ds *dataset.Set, hooks Hooks) (*TrainResult, *Version, error) {
	if hooks.Collecting != nil {
		cached, total := c.CacheStatus(ds)
		hooks.Collecting(cached, total)
	}
	if err := c.Collect(ctx, ds, hooks.Progress); err != nil {
		return nil, nil, err
	}
	res, err := c.Train(ctx, ds, hooks)
	if err != nil {
		return nil, nil, err
	}
	v, err := c.Publish(ctx, res)
	if err != nil {
		return nil, nil, err
	}
	return res, v, nil
}
