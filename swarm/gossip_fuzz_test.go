package swarm

import (
	"context"
	"crypto/rand"
	"testing"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/protocol"
)

// FuzzGossipValidators feeds arbitrary payloads, claimed to come from a
// trusted or an untrusted peer, to both topic validators: they must never
// panic, and they may only accept a payload that parses as their message
// type, comes from the peer it names or that signed it, and (adaptors)
// carries a valid signature by a trusted signer.
func FuzzGossipValidators(f *testing.F) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	trusted, _ := peer.IDFromPrivateKey(key)
	other, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	stranger, _ := peer.IDFromPrivateKey(other)

	advert, _ := protocol.Marshal(&protocol.Advert{V: protocol.Version, Peer: trusted.String(), Device: "cpu", UnixMilli: 1})
	ann := &protocol.AdaptorAnnounce{V: protocol.Version, CID: CIDOf([]byte("adaptor")).String(),
		BaseHash: "01d94521112183126c68afa067c02e86ef09a05e234b6f81312c3170d61ce498", Step: 3, Size: 7, UnixMilli: 1}
	if err := ann.Sign(key); err != nil {
		f.Fatal(err)
	}
	signed, _ := protocol.Marshal(ann)
	f.Add(advert, false)
	f.Add(signed, false)
	f.Add(signed, true)
	f.Add([]byte{7, 1, 0, 0, 0, 1, 0x80}, false)

	f.Fuzz(func(t *testing.T, data []byte, fromStranger bool) {
		from := trusted
		if fromStranger {
			from = stranger
		}
		msg := &pubsub.Message{Message: &pb.Message{Data: data, From: []byte(from)}}
		ctx := context.Background()
		if newAdvertValidator().validate(ctx, from, msg) == pubsub.ValidationAccept {
			a, ok := parseGossip[*protocol.Advert](msg)
			if !ok || a.Peer != from.String() {
				t.Fatalf("advert validator accepted %x from %s", data, from)
			}
		}
		if newAnnounceValidator([]peer.ID{trusted}).validate(ctx, from, msg) == pubsub.ValidationAccept {
			a, ok := parseGossip[*protocol.AdaptorAnnounce](msg)
			if !ok || from != trusted {
				t.Fatalf("announce validator accepted %x from %s", data, from)
			}
			if signer, err := a.Verify(); err != nil || signer != trusted {
				t.Fatalf("announce validator accepted a bad signature: %v", err)
			}
		}
	})
}
