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
	// base's weights and the numerics the node computes them with
	// (model.Base.EmbedHash: the weights' hash for exact float32 products);
	// EmbedRequest.BaseHash refers to it.
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
	return firstErr(
		checkVersion(m.V),
		checkPeerID("Peer", m.Peer),
		checkList("Bases", m.Bases, 0, maxBases, checkBase),
		checkList("Codecs", m.Codecs, 0, maxCodecs, checkIdent),
		checkNonNegative("TokensPerSec", m.TokensPerSec),
		checkRange("FreeSlots", m.FreeSlots, 0, maxFreeSlots),
		checkText("Device", m.Device, maxNameLen, true),
		checkRange("UnixMilli", m.UnixMilli, 1, 1<<62),
	)
}

// checkPeerID checks a peer ID in its string form (its length first).
func checkPeerID(field, s string) error {
	if len(s) > maxPeerIDLen {
		return fmt.Errorf("%s: %d characters, over %d", field, len(s), maxPeerIDLen)
	}
	if _, err := peer.Decode(s); err != nil {
		return fmt.Errorf("%s: %q is not a peer ID: %w", field, s, err)
	}
	return nil
}

// checkBase checks a BaseInfo field; its errors name the field's fields
// ("Bases[0].Dim: ...").
func checkBase(field string, b BaseInfo) error {
	if err := b.validate(); err != nil {
		return fmt.Errorf("%s.%w", field, err)
	}
	return nil
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
