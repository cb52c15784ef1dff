package protocol

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Advert is a node's presence message on NodesTopic, republished
// periodically (node.Config.AdvertInterval).
type Advert struct {
	V uint8 `msgpack:"v"` // message version, >= 1; this build writes Version
	// Peer is the node's peer.ID in its string form. Gossip validators
	// require it to equal the message's signed author.
	Peer string `msgpack:"peer"`
	// Bases are the base models the node serves, at most 16.
	Bases []BaseInfo `msgpack:"bases"`
	// Codecs are the bridge settings the node can produce ("q8", "q4",
	// "bf16", ...), at most 32 identifiers of 1..64 characters.
	Codecs []string `msgpack:"codecs"`
	// TokensPerSec is the node's measured base-forward throughput, tokens
	// per second, finite and >= 0 (0 = not measured yet).
	TokensPerSec float64 `msgpack:"tps"`
	// FreeSlots is how many more embedding jobs the node accepts right now,
	// 0..65536; 0 also while the node is paused (by its owner, outside its
	// schedule, on battery, user active): it hands back whatever it is sent.
	FreeSlots int `msgpack:"free"`
	// Device says what runs the forward pass: "cpu", "cuda:NVIDIA H100".
	// Free text, 1..128 bytes.
	Device string `msgpack:"device"`
	// UnixMilli is when the advert was made, milliseconds since the Unix
	// epoch, > 0.
	UnixMilli int64 `msgpack:"ms"`
}

// BaseInfo describes one base model a node serves.
type BaseInfo struct {
	// Name is a human-readable name ("Qwen2.5-0.5B"), 1..128 bytes; the
	// identity of the base is WeightsHash, never the name.
	Name string `msgpack:"name"`
	// WeightsHash is the lowercase hex SHA-256 (64 characters) naming the
	// base's weights; EmbedRequest.BaseHash refers to it.
	WeightsHash string `msgpack:"hash"`
	// Arch is the model family ("qwen2", "llama", "qwen3"), an identifier.
	Arch string `msgpack:"arch"`
	// Dim is the hidden width D, 1..MaxHiddenDim.
	Dim int `msgpack:"dim"`
	// Layers is the number of transformer blocks, 1..MaxModelLayers.
	Layers int `msgpack:"layers"`
	// Vocab is the vocabulary size, 1..MaxVocab.
	Vocab int `msgpack:"vocab"`
}

func (*Advert) Type() MsgType    { return TypeAdvert }
func (m *Advert) version() uint8 { return m.V }

func (m *Advert) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if len(m.Peer) > maxPeerIDLen {
		return fmt.Errorf("Peer: %d characters, over %d", len(m.Peer), maxPeerIDLen)
	}
	if _, err := peer.Decode(m.Peer); err != nil {
		return fmt.Errorf("Peer: %q is not a peer ID: %w", m.Peer, err)
	}
	if len(m.Bases) > maxBases {
		return fmt.Errorf("Bases: %d entries, max %d", len(m.Bases), maxBases)
	}
	for i := range m.Bases {
		if err := m.Bases[i].validate(); err != nil {
			return fmt.Errorf("Bases[%d].%w", i, err)
		}
	}
	if len(m.Codecs) > maxCodecs {
		return fmt.Errorf("Codecs: %d entries, max %d", len(m.Codecs), maxCodecs)
	}
	for i, c := range m.Codecs {
		if err := checkIdent(fmt.Sprintf("Codecs[%d]", i), c); err != nil {
			return err
		}
	}
	if err := checkFinite("TokensPerSec", m.TokensPerSec); err != nil {
		return err
	}
	if m.TokensPerSec < 0 {
		return fmt.Errorf("TokensPerSec: %v is negative", m.TokensPerSec)
	}
	return firstErr(
		checkRange("FreeSlots", m.FreeSlots, 0, maxFreeSlots),
		checkText("Device", m.Device, maxNameLen, true),
		checkRange("UnixMilli", m.UnixMilli, 1, 1<<62),
	)
}

func (b *BaseInfo) validate() error {
	return firstErr(
		checkText("Name", b.Name, maxNameLen, true),
		checkHex("WeightsHash", b.WeightsHash, 64),
		checkIdent("Arch", b.Arch),
		checkRange("Dim", b.Dim, 1, MaxHiddenDim),
		checkRange("Layers", b.Layers, 1, MaxModelLayers),
		checkRange("Vocab", b.Vocab, 1, MaxVocab),
	)
}

// Serves reports whether the advert lists a base with the given weights hash.
func (m *Advert) Serves(weightsHash string) (BaseInfo, bool) {
	for _, b := range m.Bases {
		if b.WeightsHash == weightsHash {
			return b, true
		}
	}
	return BaseInfo{}, false
}
