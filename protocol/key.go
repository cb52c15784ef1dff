package protocol

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/libp2p/go-libp2p/core/pnet"
)

// NewSwarmKey returns a fresh 32-byte pre-shared key in the standard
// libp2p swarm.key file format:
//
//	/key/swarm/psk/1.0.0/
//	/base16/
//	<64 lowercase hex characters>
func NewSwarmKey() ([]byte, error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, fmt.Errorf("protocol.NewSwarmKey: %w", err)
	}
	return []byte("/key/swarm/psk/1.0.0/\n/base16/\n" + hex.EncodeToString(k[:]) + "\n"), nil
}

// NewSwarmPSK returns a fresh swarm key both ways: the swarm.key file's
// text (NewSwarmKey) and the pre-shared key it decodes to.
func NewSwarmPSK() ([]byte, pnet.PSK, error) {
	text, err := NewSwarmKey()
	if err != nil {
		return nil, nil, err
	}
	psk, err := ParseSwarmKey(bytes.NewReader(text))
	if err != nil {
		return nil, nil, fmt.Errorf("protocol.NewSwarmPSK: %w", err)
	}
	return text, psk, nil
}

// ErrNotSwarmKey is what ParseSwarmKey's errors wrap: the bytes are not a
// libp2p swarm key of 32 bytes.
var ErrNotSwarmKey = errors.New("not a swarm key (want the output of carryon keygen)")

// ParseSwarmKey reads a swarm.key file (base16, base64 or bin encoding).
// Its errors wrap ErrNotSwarmKey and speak of the file's content (the
// caller names the file), not of the decoder.
func ParseSwarmKey(r io.Reader) (pnet.PSK, error) {
	psk, err := pnet.DecodeV1PSK(r)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, ErrNotSwarmKey // empty or cut short: the decoder's "EOF" says nothing more
		}
		return nil, fmt.Errorf("%w: %v", ErrNotSwarmKey, err)
	}
	if len(psk) != 32 {
		return nil, fmt.Errorf("%w: the key is %d bytes, want 32", ErrNotSwarmKey, len(psk))
	}
	return psk, nil
}

// SwarmName derives a short public name (16 hex characters) from a swarm
// key, so each private swarm has its own gossip topics without revealing
// its key. A nil or empty key is the "public" swarm.
func SwarmName(psk pnet.PSK) string {
	if len(psk) == 0 {
		return "public"
	}
	h := sha256.New()
	h.Write([]byte("carryon/swarm-name/v1\n"))
	h.Write(psk)
	return hex.EncodeToString(h.Sum(nil)[:8])
}
