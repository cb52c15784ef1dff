package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/vmihailenco/msgpack/v5"
)

// Stream protocol IDs. The major version changes on a breaking change (see
// the package comment); v1: initial.
const (
	// EmbedProtocol carries embedding jobs, coordinator → node.
	EmbedProtocol = "/carryon/embed/1.0.0"
	// RosterProtocol hands a connecting member the signer's current Roster
	// (the signer opens no stream; the member does, reads one frame).
	RosterProtocol = "/carryon/roster/1.0.0"
)

// NodesTopic is the gossipsub topic on which the nodes of a swarm publish
// their Adverts. swarm is SwarmName of the swarm key ("public" without one).
func NodesTopic(swarm string) string { return "carryon/" + swarm + "/nodes/1" }

// AdaptorsTopic is the gossipsub topic on which a swarm's coordinator
// publishes signed AdaptorAnnounce messages.
func AdaptorsTopic(swarm string) string { return "carryon/" + swarm + "/adaptors/1" }

// ControlTopic is the gossipsub topic on which a swarm's coordinator
// publishes its Roster and JobAnnounce messages.
func ControlTopic(swarm string) string { return "carryon/" + swarm + "/control/1" }

// MsgType is the first byte of a frame. APPEND ONLY: the values are the
// protocol; never renumber or reuse one.
type MsgType uint8

const (
	TypeAdvert          MsgType = 1
	TypeEmbedRequest    MsgType = 2
	TypeEmbedResult     MsgType = 3
	TypeEmbedDone       MsgType = 4
	TypeAck             MsgType = 5
	TypeError           MsgType = 6
	TypeAdaptorAnnounce MsgType = 7
	// 8, 9 and 10 were BlobRequest, BlobManifest and BlobChunk of the
	// blob protocol "/carryon/blob/1.0.0", which bitswap replaced: never
	// reuse them.
	TypeResultOffer MsgType = 11
	TypeOfferReply  MsgType = 12
	TypeRoster      MsgType = 13
	TypeJobAnnounce MsgType = 14
	TypeCacheQuery  MsgType = 15
	TypeCacheIndex  MsgType = 16
)

var typeNames = [...]string{
	TypeAdvert:          "Advert",
	TypeEmbedRequest:    "EmbedRequest",
	TypeEmbedResult:     "EmbedResult",
	TypeEmbedDone:       "EmbedDone",
	TypeAck:             "Ack",
	TypeError:           "Error",
	TypeAdaptorAnnounce: "AdaptorAnnounce",
	TypeResultOffer:     "ResultOffer",
	TypeOfferReply:      "OfferReply",
	TypeRoster:          "Roster",
	TypeJobAnnounce:     "JobAnnounce",
	TypeCacheQuery:      "CacheQuery",
	TypeCacheIndex:      "CacheIndex",
}

func (t MsgType) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}

// Known reports whether this build knows the type.
func (t MsgType) Known() bool { return newMessage(t) != nil }

// Message is one wire message. All message types are pointers to structs in
// this package. Each struct's V field is its version, also sent as the
// frame's version byte; this build writes Version and accepts any V >= 1.
type Message interface {
	Type() MsgType
	// Validate checks every field against its documented bounds; errors
	// name the field and the bound.
	Validate() error
}

// Version is the version this build writes into every message's V field.
const Version uint8 = 1

// versioned is implemented by every message; it reads V without reflection.
type versioned interface{ version() uint8 }

func newMessage(t MsgType) Message {
	switch t {
	case TypeAdvert:
		return new(Advert)
	case TypeEmbedRequest:
		return new(EmbedRequest)
	case TypeEmbedResult:
		return new(EmbedResult)
	case TypeEmbedDone:
		return new(EmbedDone)
	case TypeAck:
		return new(Ack)
	case TypeError:
		return new(Error)
	case TypeAdaptorAnnounce:
		return new(AdaptorAnnounce)
	case TypeResultOffer:
		return new(ResultOffer)
	case TypeOfferReply:
		return new(OfferReply)
	case TypeRoster:
		return new(Roster)
	case TypeJobAnnounce:
		return new(JobAnnounce)
	case TypeCacheQuery:
		return new(CacheQuery)
	case TypeCacheIndex:
		return new(CacheIndex)
	}
	return nil
}

// HeaderLen is the size of a frame header: type, version, u32 length.
const HeaderLen = 6

// maxSkipFrames bounds how many frames of unknown type ReadFrame skips in a
// row before giving up, so a peer cannot keep a reader spinning for free.
const maxSkipFrames = 16

// ErrUnknownType is returned by Unmarshal for a frame whose type this build
// does not know (ReadFrame skips such frames instead).
var ErrUnknownType = errors.New("unknown message type")

// ErrFrameTooLarge is wrapped by errors about a frame over its type's cap.
var ErrFrameTooLarge = errors.New("frame too large")

// Marshal validates m and returns its whole frame (header and body).
func Marshal(m Message) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("protocol.Marshal %v: %w", m.Type(), err)
	}
	return encodeFrame(m)
}

// encodeFrame encodes without validating (Sign uses it on a draft).
func encodeFrame(m Message) ([]byte, error) {
	t := m.Type()
	var buf bytes.Buffer
	buf.Write(make([]byte, HeaderLen))
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true) // deterministic bytes: signatures and pinned tests
	enc.UseCompactInts(true)
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("protocol.Marshal %v: %w", t, err)
	}
	b := buf.Bytes()
	n := len(b) - HeaderLen
	if limit := MaxFrameBytes(t); n > limit {
		return nil, fmt.Errorf("protocol.Marshal %v: body is %d bytes, cap %d: %w", t, n, limit, ErrFrameTooLarge)
	}
	b[0] = byte(t)
	b[1] = m.(versioned).version()
	binary.BigEndian.PutUint32(b[2:HeaderLen], uint32(n))
	return b, nil
}

// WriteFrame validates m, encodes it, checks the type's size cap, and only
// then writes the whole frame with one Write.
func WriteFrame(w io.Writer, m Message) error {
	b, err := Marshal(m)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("protocol.WriteFrame %v: %w", m.Type(), err)
	}
	return nil
}

// Unmarshal parses one whole frame held in memory (a gossip payload). The
// frame must be the entire input; an unknown type is ErrUnknownType.
func Unmarshal(b []byte) (Message, error) {
	if len(b) < HeaderLen {
		return nil, fmt.Errorf("protocol.Unmarshal: %d bytes, shorter than a frame header", len(b))
	}
	t, ver, n := MsgType(b[0]), b[1], binary.BigEndian.Uint32(b[2:HeaderLen])
	if !t.Known() {
		return nil, fmt.Errorf("protocol.Unmarshal: %v: %w", t, ErrUnknownType)
	}
	if uint64(n) > uint64(MaxFrameBytes(t)) {
		return nil, fmt.Errorf("protocol.Unmarshal %v: length %d over cap %d: %w", t, n, MaxFrameBytes(t), ErrFrameTooLarge)
	}
	if uint64(len(b)-HeaderLen) != uint64(n) {
		return nil, fmt.Errorf("protocol.Unmarshal %v: header says %d body bytes, have %d", t, n, len(b)-HeaderLen)
	}
	return decodeBody(t, ver, b[HeaderLen:])
}

// ReadFrame reads one frame from r. It checks the length against the type's
// cap before allocating, skips (without buffering) frames of a type this
// build does not know, checks the body's nested lengths with ValidateMsgpack,
// decodes it (ignoring unknown fields) and validates the message.
func ReadFrame(r io.Reader) (Message, error) {
	var hdr [HeaderLen]byte
	for skipped := 0; ; skipped++ {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if err == io.ErrUnexpectedEOF {
				return nil, fmt.Errorf("protocol.ReadFrame: short header: %w", err)
			}
			return nil, err // io.EOF between frames is a clean end
		}
		t, ver, n := MsgType(hdr[0]), hdr[1], binary.BigEndian.Uint32(hdr[2:])
		if uint64(n) > uint64(MaxFrameBytes(t)) {
			return nil, fmt.Errorf("protocol.ReadFrame %v: length %d over cap %d: %w", t, n, MaxFrameBytes(t), ErrFrameTooLarge)
		}
		if !t.Known() {
			if skipped >= maxSkipFrames {
				return nil, fmt.Errorf("protocol.ReadFrame: more than %d frames of unknown type in a row", maxSkipFrames)
			}
			if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
				return nil, fmt.Errorf("protocol.ReadFrame: skipping %v: %w", t, noEOF(err))
			}
			continue
		}
		body, err := readBody(r, int(n))
		if err != nil {
			return nil, fmt.Errorf("protocol.ReadFrame %v: body: %w", t, noEOF(err))
		}
		return decodeBody(t, ver, body)
	}
}

// initialBody is the most ReadFrame allocates for a body before any of it
// has arrived; beyond it the buffer grows (doubling) only as bytes arrive,
// so a header claiming 64 MiB costs a peer 64 MiB of sending, not 6 bytes.
const initialBody = 256 << 10

// readBody reads exactly n bytes from r.
func readBody(r io.Reader, n int) ([]byte, error) {
	buf := make([]byte, min(n, initialBody))
	have := 0
	for {
		k, err := io.ReadFull(r, buf[have:])
		have += k
		if err != nil {
			return nil, err
		}
		if have == n {
			return buf, nil
		}
		grown := make([]byte, min(n, 2*len(buf)))
		copy(grown, buf)
		buf = grown
	}
}

// noEOF turns an EOF inside a frame into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// decodeBody checks, decodes and validates a body of a known type.
func decodeBody(t MsgType, ver uint8, body []byte) (Message, error) {
	if ver == 0 {
		return nil, fmt.Errorf("protocol: %v: frame version 0", t)
	}
	if len(body) == 0 || !isMapCode(body[0]) {
		return nil, fmt.Errorf("protocol: %v: body is not a msgpack map", t)
	}
	if err := validateMsgpack(body, maxDepth, maxElems(t)); err != nil {
		return nil, fmt.Errorf("protocol: %v: %w", t, err)
	}
	m := newMessage(t)
	if err := msgpack.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("protocol: decoding %v: %w", t, err)
	}
	if v := m.(versioned).version(); v != ver {
		return nil, fmt.Errorf("protocol: %v: body version %d differs from frame version %d", t, v, ver)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("protocol: invalid %v: %w", t, err)
	}
	return m, nil
}

// ReadExpect reads one frame and returns it as T. A remote *Error frame is
// returned as the error (test it with errors.As or KindOf); any other type
// is an error naming both types.
func ReadExpect[T Message](r io.Reader) (T, error) {
	var zero T
	m, err := ReadFrame(r)
	if err != nil {
		return zero, err
	}
	if v, ok := m.(T); ok {
		return v, nil
	}
	if e, ok := m.(*Error); ok {
		return zero, e
	}
	return zero, fmt.Errorf("protocol.ReadExpect: got %v, want %v", m.Type(), zero.Type())
}

// firstErr returns the first non-nil error of a validator's checks, in
// the order given (each check is cheap and pure, so all are evaluated).
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
