package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// maxDepth bounds container nesting in a message body; our deepest message
// (Advert: map → Bases array → BaseInfo map) has depth 3.
const maxDepth = 8

var errTruncated = errors.New("msgpack: truncated")

// ValidateMsgpack checks that b is exactly one well-formed msgpack value,
// nested at most maxDepth containers deep, in which every length prefix fits
// in the bytes that remain: a str, bin or ext length is at most the bytes
// left, an array of n elements needs at least n bytes more and a map of n
// entries at least 2n. It walks b in place and allocates nothing, so a
// hostile length prefix is caught before msgpack/v5, which allocates what a
// prefix asks for, ever sees it.
func ValidateMsgpack(b []byte, maxDepth int) error {
	return validateMsgpack(b, maxDepth, len(b))
}

// validateMsgpack is ValidateMsgpack with a bound on the total number of
// array elements plus map keys and values. Decoding allocates per element
// (24 bytes for a slice header, more for a map entry), so this bound, chosen
// per message type by maxElems, caps the decoder's allocation at a small
// multiple of the frame cap.
func validateMsgpack(b []byte, maxDepth, maxElems int) error {
	w := walker{b: b, elems: maxElems}
	if err := w.value(maxDepth); err != nil {
		return fmt.Errorf("msgpack at byte %d: %w", w.off, err)
	}
	if w.off != len(b) {
		return fmt.Errorf("msgpack: %d trailing bytes after the value", len(b)-w.off)
	}
	return nil
}

type walker struct {
	b     []byte
	off   int
	elems int // element budget left
}

func (w *walker) left() uint64 { return uint64(len(w.b) - w.off) }

// skip advances n bytes, failing if fewer remain.
func (w *walker) skip(n uint64) error {
	if n > w.left() {
		return errTruncated
	}
	w.off += int(n)
	return nil
}

// uint reads a big-endian length of size 1, 2 or 4 bytes.
func (w *walker) uint(size int) (uint64, error) {
	if uint64(size) > w.left() {
		return 0, errTruncated
	}
	p := w.b[w.off : w.off+size]
	w.off += size
	switch size {
	case 1:
		return uint64(p[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(p)), nil
	default:
		return uint64(binary.BigEndian.Uint32(p)), nil
	}
}

// value walks one value; depth is how many more containers may nest.
func (w *walker) value(depth int) error {
	if w.left() == 0 {
		return errTruncated
	}
	c := w.b[w.off]
	w.off++
	switch {
	case c <= 0x7f || c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		return nil // fixint, nil, bool
	case c >= 0x80 && c <= 0x8f:
		return w.container(uint64(c&0x0f), 2, depth)
	case c >= 0x90 && c <= 0x9f:
		return w.container(uint64(c&0x0f), 1, depth)
	case c >= 0xa0 && c <= 0xbf:
		return w.skip(uint64(c & 0x1f))
	}
	switch c {
	case 0xc4, 0xc5, 0xc6, 0xd9, 0xda, 0xdb: // bin8/16/32, str8/16/32
		n, err := w.uint(lenSize(c))
		if err != nil {
			return err
		}
		return w.skip(n)
	case 0xc7, 0xc8, 0xc9: // ext8/16/32: length, type byte, data
		n, err := w.uint(1 << (c - 0xc7))
		if err != nil {
			return err
		}
		return w.skip(n + 1)
	case 0xca, 0xcb: // float32/64
		return w.skip(4 << (c - 0xca))
	case 0xcc, 0xcd, 0xce, 0xcf: // uint8..64
		return w.skip(1 << (c - 0xcc))
	case 0xd0, 0xd1, 0xd2, 0xd3: // int8..64
		return w.skip(1 << (c - 0xd0))
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext1..16: type byte, data
		return w.skip(1 + 1<<(c-0xd4))
	case 0xdc, 0xdd, 0xde, 0xdf: // array16/32, map16/32
		n, err := w.uint(2 << ((c - 0xdc) & 1))
		if err != nil {
			return err
		}
		per := uint64(1)
		if c >= 0xde {
			per = 2
		}
		return w.container(n, per, depth)
	}
	return fmt.Errorf("msgpack: invalid code 0x%02x", c)
}

// lenSize is the width of the length after a bin or str code.
func lenSize(c byte) int {
	switch c {
	case 0xc4, 0xd9:
		return 1
	case 0xc5, 0xda:
		return 2
	}
	return 4
}

// container walks n entries of per values each (1: array, 2: map).
func (w *walker) container(n, per uint64, depth int) error {
	if depth <= 0 {
		return errors.New("msgpack: nested too deep")
	}
	total := n * per // n < 2^32, so no overflow
	if total > w.left() {
		return fmt.Errorf("msgpack: container of %d entries in %d bytes: %w", n, w.left(), errTruncated)
	}
	if total > uint64(w.elems) {
		return fmt.Errorf("msgpack: more than the %d elements this message allows", w.elems)
	}
	w.elems -= int(total)
	for i := uint64(0); i < total; i++ {
		if err := w.value(depth - 1); err != nil {
			return err
		}
	}
	return nil
}

// isMapCode reports whether c starts a msgpack map.
func isMapCode(c byte) bool { return c >= 0x80 && c <= 0x8f || c == 0xde || c == 0xdf }
