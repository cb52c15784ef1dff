package node

import (
	"cmp"
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/swarm"
	"carryon/tensor"
)

// Config configures a Node. Zero values mean the documented default.
type Config struct {
	// Codecs are the bridge settings this node offers (tensor.ParseCodec
	// names). Default: q8, q4, q2, bf16.
	Codecs []string
	// MaxJobs is how many embedding jobs run at once; further requests get
	// an Overloaded error. Default 1 (the forward pass already uses every
	// core).
	MaxJobs int
	// MaxQueue is how many further jobs may wait for a slot (so the next
	// chunk is already on the wire while one computes). Default 2.
	MaxQueue int
	// AdvertInterval is how often the node republishes its advert.
	// Default 500 ms (DefaultLocalConfig) or 20 s (DefaultInternetConfig).
	AdvertInterval time.Duration
	// JobTimeout bounds one embedding job, from request to acknowledgement.
	// Default 10 minutes.
	JobTimeout time.Duration
	// DrainTimeout bounds how long Close waits for in-flight jobs. Default 10 s.
	DrainTimeout time.Duration
	// KeepResults is how many finished results the node keeps while the
	// coordinator has not acknowledged them as durable (no Ack came, or
	// Ack.Held), to offer them again after a reconnect (keep.go); the
	// oldest beyond it are forgotten. Default 64.
	KeepResults int
	// KeepFor is how long a kept result is offered. Default 30 min.
	KeepFor time.Duration
	// OfferInterval is how often the node offers kept results to a
	// connected coordinator (besides at once on reconnecting). Default 2 s.
	OfferInterval time.Duration
	// MaxMemory bounds the memory the node plans to use, in bytes: New
	// refuses a base whose weights do not fit, and jobs wait for their
	// share of the rest (see limits.go). 0: no limit.
	MaxMemory int64
	// Device names the compute device in adverts ("cpu", "cuda:<name>").
	// Default "cpu".
	Device string
	// Bootstrap are the peers the node stays connected to, usually the
	// coordinator: dialled at Start and redialled with backoff (Redial) as
	// soon as the last connection to one of them drops. Empty: none (the
	// caller connects the host itself).
	Bootstrap []peer.AddrInfo
	// Redial is the backoff of those dials (swarm.RedialConfig's defaults:
	// 250 ms doubling to 10 s, jittered). Its OnEvent is set by the node.
	Redial swarm.RedialConfig
	// Logger receives what a volunteer wants to see at Info: connections
	// to the coordinator made, lost and back, each chunk leased and
	// finished (with tokens/s). Nil means slog.Default().
	Logger *slog.Logger
}

// DefaultLocalConfig suits tests and demos on one machine.
func DefaultLocalConfig() Config {
	return Config{AdvertInterval: 500 * time.Millisecond}.withDefaults()
}

// DefaultInternetConfig suits volunteers on the open internet.
func DefaultInternetConfig() Config {
	return Config{AdvertInterval: 20 * time.Second}.withDefaults()
}

func (c Config) withDefaults() Config {
	if len(c.Codecs) == 0 {
		c.Codecs = []string{"q8", "q4", "q2", "bf16"}
	}
	c.MaxJobs = cmp.Or(c.MaxJobs, 1)
	c.MaxQueue = cmp.Or(c.MaxQueue, 2)
	c.AdvertInterval = cmp.Or(c.AdvertInterval, 2*time.Second)
	c.JobTimeout = cmp.Or(c.JobTimeout, 10*time.Minute)
	c.DrainTimeout = cmp.Or(c.DrainTimeout, 10*time.Second)
	c.KeepResults = cmp.Or(c.KeepResults, 64)
	c.KeepFor = cmp.Or(c.KeepFor, 30*time.Minute)
	c.OfferInterval = cmp.Or(c.OfferInterval, 2*time.Second)
	c.Device = cmp.Or(c.Device, "cpu")
	c.Logger = cmp.Or(c.Logger, slog.Default())
	return c
}

// Validate reports the first field out of bounds (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	for _, s := range c.Codecs {
		if _, err := tensor.ParseCodec(s); err != nil {
			return fmt.Errorf("node.Config.Codecs: %q: %w", s, err)
		}
	}
	switch {
	case c.MaxJobs < 1 || c.MaxJobs > 64:
		return fmt.Errorf("node.Config.MaxJobs: %d not in [1, 64]", c.MaxJobs)
	case c.MaxQueue < 0 || c.MaxQueue > 1024:
		return fmt.Errorf("node.Config.MaxQueue: %d not in [0, 1024]", c.MaxQueue)
	case c.AdvertInterval < 10*time.Millisecond:
		return fmt.Errorf("node.Config.AdvertInterval: %v is below 10ms", c.AdvertInterval)
	case c.JobTimeout < time.Second:
		return fmt.Errorf("node.Config.JobTimeout: %v is below 1s", c.JobTimeout)
	case c.MaxMemory < 0:
		return fmt.Errorf("node.Config.MaxMemory: %d is negative", c.MaxMemory)
	case c.DrainTimeout < 0:
		return fmt.Errorf("node.Config.DrainTimeout: %v is negative", c.DrainTimeout)
	case c.KeepResults < 0 || c.KeepResults > 4096:
		return fmt.Errorf("node.Config.KeepResults: %d not in [0, 4096]", c.KeepResults)
	case c.KeepFor < time.Second:
		return fmt.Errorf("node.Config.KeepFor: %v is below 1s", c.KeepFor)
	case c.OfferInterval < 10*time.Millisecond:
		return fmt.Errorf("node.Config.OfferInterval: %v is below 10ms", c.OfferInterval)
	}
	for i, ai := range c.Bootstrap {
		if err := ai.ID.Validate(); err != nil || len(ai.Addrs) == 0 {
			return fmt.Errorf("node.Config.Bootstrap[%d]: needs a peer ID and an address", i)
		}
	}
	if err := c.Redial.Validate(); err != nil {
		return fmt.Errorf("node.Config.Redial: %w", err)
	}
	return nil
}
