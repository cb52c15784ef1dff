package protocol

import (
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The signed messages (AdaptorAnnounce, Roster) share one envelope: the
// signature covers a domain string (so a signature for one kind of
// message is never valid for another), then the message's own frame with
// Sig empty; Signer holds the signer's marshalled libp2p public key.

// ErrBadSignature is wrapped by Verify's errors about a missing or wrong
// signature.
var ErrBadSignature = errors.New("bad signature")

// signedFrame returns domain followed by m's frame; m is a copy whose Sig
// is already empty, and must be valid.
func signedFrame(domain string, m Message) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	frame, err := encodeFrame(m)
	if err != nil {
		return nil, err
	}
	return append([]byte(domain), frame...), nil
}

// sign sets *signer to k's public key and then *sig to k's signature over
// what signed returns (called after *signer is set: the key is covered).
func sign(op string, k crypto.PrivKey, signer, sig *[]byte, signed func() ([]byte, error)) error {
	pub, err := crypto.MarshalPublicKey(k.GetPublic())
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	*signer = pub
	b, err := signed()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	s, err := k.Sign(b)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	*sig = s
	return nil
}

// verifySigned checks sig by the public key signer over what signed
// returns, and returns the signer's peer ID.
func verifySigned(op string, signer, sig []byte, signed func() ([]byte, error)) (peer.ID, error) {
	if len(signer) == 0 || len(sig) == 0 {
		return "", fmt.Errorf("%s: unsigned: %w", op, ErrBadSignature)
	}
	pub, err := crypto.UnmarshalPublicKey(signer)
	if err != nil {
		return "", fmt.Errorf("%s: Signer: %w", op, err)
	}
	b, err := signed()
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	ok, err := pub.Verify(b, sig)
	if err != nil || !ok {
		return "", fmt.Errorf("%s: %w (%v)", op, ErrBadSignature, err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	return id, nil
}
