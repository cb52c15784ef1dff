package protocol

import (
	"errors"
	"fmt"
	"unicode"
)

// ErrorKind classifies a remote error; the receiver decides from it whether
// to retry, reassign or lower a peer's score. APPEND ONLY: the values are on
// the wire; never renumber or reuse one.
type ErrorKind uint8

const (
	// KindInvalid: the request broke the protocol or its bounds; do not retry.
	KindInvalid ErrorKind = 1
	// KindOverloaded: no free slot now; retry later or elsewhere.
	KindOverloaded ErrorKind = 2
	// KindModelMismatch: the peer does not serve the requested base hash.
	KindModelMismatch ErrorKind = 3
	// KindInternal: the peer failed on a valid request (a bug or a fault).
	KindInternal ErrorKind = 4
	// KindTransient: a passing failure (shutting down, I/O); retry.
	KindTransient ErrorKind = 5
	// KindNotFound: the peer does not hold the requested blob.
	KindNotFound ErrorKind = 6
	// KindTooLarge: the request is over a limit of this peer (a node's
	// memory limit): do not send it, or a larger one of the same job, to
	// this peer again; send it elsewhere.
	KindTooLarge ErrorKind = 7

	lastKind = KindTooLarge
)

var kindNames = [...]string{
	KindInvalid:       "invalid",
	KindOverloaded:    "overloaded",
	KindModelMismatch: "model mismatch",
	KindInternal:      "internal",
	KindTransient:     "transient",
	KindNotFound:      "not found",
	KindTooLarge:      "too large",
}

func (k ErrorKind) String() string {
	if k >= 1 && k <= lastKind {
		return kindNames[k]
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// Error is a remote failure sent on a stream in place of the expected
// message; the sender closes the stream after it. *Error implements error.
type Error struct {
	V uint8 `msgpack:"v"` // message version, >= 1
	// Kind is one of the Kind constants (this build rejects others).
	Kind ErrorKind `msgpack:"kind"`
	// Msg says what went wrong for a human; UTF-8, at most 1024 bytes.
	Msg string `msgpack:"msg"`
}

// Errorf makes an *Error of the given kind; the message is cut to the
// 1024-byte bound at a rune boundary.
func Errorf(kind ErrorKind, format string, args ...any) *Error {
	msg := sanitize(fmt.Sprintf(format, args...))
	return &Error{V: Version, Kind: kind, Msg: truncateUTF8(msg, maxTextLen)}
}

func (e *Error) Error() string { return fmt.Sprintf("remote error (%v): %s", e.Kind, e.Msg) }

func (*Error) Type() MsgType    { return TypeError }
func (m *Error) version() uint8 { return m.V }

func (m *Error) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if m.Kind < 1 || m.Kind > lastKind {
		return fmt.Errorf("Kind: %d is not a known kind (1..%d)", m.Kind, lastKind)
	}
	return checkText("Msg", m.Msg, maxTextLen, false)
}

// KindOf returns the kind of the first *Error in err's chain, or 0.
func KindOf(err error) ErrorKind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

// truncateUTF8 cuts s to at most n bytes without splitting a rune.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xc0 == 0x80 {
		n--
	}
	return s[:n]
}

// sanitize replaces control characters and invalid UTF-8 so that Errorf
// always builds a valid message.
func sanitize(s string) string {
	if checkText("", s, len(s), false) == nil {
		return s
	}
	out := make([]rune, 0, len(s))
	for _, r := range s {
		if unicode.IsControl(r) {
			r = ' '
		}
		out = append(out, r)
	}
	return string(out)
}
