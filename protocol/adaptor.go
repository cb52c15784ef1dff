package protocol

import (
	"fmt"
	"sort"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/vmihailenco/msgpack/v5"
)

// AdaptorAnnounce tells the swarm about a new adaptor version, published by
// the coordinator on AdaptorsTopic and signed with its peer key. The file
// is fetched by CID over bitswap (package swarm), from the coordinator or
// any peer that pulled it.
type AdaptorAnnounce struct {
	V uint8 `msgpack:"v"` // message version, >= 1
	// CID names the adaptor file: the CID of its UnixFS layout (see
	// ParseCID), string form.
	CID string `msgpack:"cid"`
	// Parent is the CID of the adaptor this one was trained on top of
	// (boosting stages), or "" for a first stage.
	Parent string `msgpack:"parent"`
	// BaseHash is the WeightsHash (64 hex characters) of the base the
	// adaptor was trained for.
	BaseHash string `msgpack:"base"`
	// Step is the training step of this version, >= 0. Per (signer,
	// BaseHash), gossip accepts only increasing steps.
	Step int `msgpack:"step"`
	// Size is the adaptor file's length in bytes, 1..MaxFileBytes.
	Size int64 `msgpack:"size"`
	// Metrics are evaluation results ("val_loss": 2.31), at most 32
	// entries, identifier keys, finite values.
	Metrics map[string]float64 `msgpack:"metrics"`
	// UnixMilli is when the version was announced, ms since the epoch, > 0.
	UnixMilli int64 `msgpack:"ms"`
	// Signer is the announcer's public key, crypto.MarshalPublicKey form,
	// at most 1024 bytes. Its peer ID must be the gossip author.
	Signer []byte `msgpack:"signer"`
	// Sig is Signer's signature over AnnounceDomain followed by the frame
	// of this message with Sig empty (see Sign), at most 1024 bytes.
	Sig []byte `msgpack:"sig"`
}

// AnnounceDomain prefixes the bytes an AdaptorAnnounce signature covers, so
// a signature can never be replayed as one over another kind of message.
const AnnounceDomain = "carryon/adaptor-announce/v1\n"

func (*AdaptorAnnounce) Type() MsgType    { return TypeAdaptorAnnounce }
func (m *AdaptorAnnounce) version() uint8 { return m.V }

// Validate checks the fields' bounds; an empty Signer or Sig is allowed here
// (a draft before Sign) and rejected by Verify.
func (m *AdaptorAnnounce) Validate() error {
	return firstErr(
		checkVersion(m.V),
		checkCIDField("CID", m.CID),
		checkOptCIDField("Parent", m.Parent),
		checkHex("BaseHash", m.BaseHash, 64),
		checkRange("Step", m.Step, 0, 1<<50),
		checkRange("Size", m.Size, 1, MaxFileBytes),
		checkMetrics(m.Metrics),
		checkSigned(m.UnixMilli, m.Signer, m.Sig),
	)
}

// checkMetrics checks at most maxMetrics entries, identifier keys, finite
// values (in key order, so the first error is always the same).
func checkMetrics(metrics map[string]float64) error {
	if len(metrics) > maxMetrics {
		return fmt.Errorf("Metrics: %d entries, max %d", len(metrics), maxMetrics)
	}
	for _, k := range sortedKeys(metrics) {
		if err := checkIdent("Metrics key", k); err != nil {
			return err
		}
		if err := checkFinite("Metrics["+k+"]", metrics[k]); err != nil {
			return err
		}
	}
	return nil
}

// EncodeMsgpack writes the announcement with its fields in declaration
// order and Metrics sorted by key. msgpack/v5's SetSortMapKeys does not sort
// a map[string]float64, and a signature needs one encoding per message.
// Decoding uses the default struct decoder (the same "v", "cid", ... keys).
func (m *AdaptorAnnounce) EncodeMsgpack(e *msgpack.Encoder) error {
	if err := e.EncodeMapLen(announceFields); err != nil {
		return err
	}
	kv := func(k string, v any) error {
		if err := e.EncodeString(k); err != nil {
			return err
		}
		return e.Encode(v)
	}
	for _, f := range []struct {
		k string
		v any
	}{{"v", m.V}, {"cid", m.CID}, {"parent", m.Parent}, {"base", m.BaseHash}, {"step", m.Step}, {"size", m.Size}} {
		if err := kv(f.k, f.v); err != nil {
			return err
		}
	}
	if err := e.EncodeString("metrics"); err != nil {
		return err
	}
	if err := encodeSortedMetrics(e, m.Metrics); err != nil {
		return err
	}
	if err := kv("ms", m.UnixMilli); err != nil {
		return err
	}
	if err := kv("signer", m.Signer); err != nil {
		return err
	}
	return kv("sig", m.Sig)
}

// announceFields is the number of fields EncodeMsgpack writes; a test
// checks it against the struct.
const announceFields = 10

func encodeSortedMetrics(e *msgpack.Encoder, metrics map[string]float64) error {
	if metrics == nil {
		return e.EncodeNil()
	}
	if err := e.EncodeMapLen(len(metrics)); err != nil {
		return err
	}
	for _, k := range sortedKeys(metrics) {
		if err := e.EncodeString(k); err != nil {
			return err
		}
		if err := e.EncodeFloat64(metrics[k]); err != nil {
			return err
		}
	}
	return nil
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// signedBytes returns what the signature covers: AnnounceDomain, then the
// frame of the message with Sig empty.
func (m *AdaptorAnnounce) signedBytes() ([]byte, error) {
	c := *m
	c.Sig = nil
	return signedFrame(AnnounceDomain, &c)
}

// Sign sets Signer to k's public key and Sig to k's signature.
func (m *AdaptorAnnounce) Sign(k crypto.PrivKey) error {
	return sign("protocol.AdaptorAnnounce.Sign", k, &m.Signer, &m.Sig, m.signedBytes)
}

// Verify checks Sig against Signer and returns the signer's peer ID. The
// caller decides whether that peer is trusted.
func (m *AdaptorAnnounce) Verify() (peer.ID, error) {
	return verifySigned("protocol.AdaptorAnnounce.Verify", m.Signer, m.Sig, m.signedBytes)
}
