package tokenizer

import (
	"sync"
	"unicode/utf8"
)

// Byte-level BPE, as Hugging Face tokenizers runs it for GPT-2, Llama-3 and
// Qwen: every byte of a pre-token is first written as one printable rune
// (GPT-2's bytes_to_unicode), the runes are the initial symbols, and the pair
// of adjacent symbols with the lowest merge rank is merged until no ranked
// pair is left (ties go to the leftmost pair).

// bpeByteRune maps a byte to its GPT-2 byte-level rune; bpeRuneByte maps
// such a rune (all are below 324) back to its byte, or -1.
var bpeByteRune, bpeRuneByte = bpeByteMaps()

// bpeByteMaps builds GPT-2's bytes_to_unicode: the printable Latin-1 bytes
// stand for themselves, the others take the runes 256, 257, ... in byte
// order.
func bpeByteMaps() ([256]rune, [324]int16) {
	var fwd [256]rune
	var inv [324]int16
	for i := range inv {
		inv[i] = -1
	}
	n := rune(0)
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			fwd[b] = rune(b)
		} else {
			fwd[b] = 256 + n
			n++
		}
		inv[fwd[b]] = int16(b)
	}
	return fwd, inv
}

// bpeByteLevel returns the byte-level form of raw bytes (one rune per byte).
func bpeByteLevel(raw string) string {
	buf := make([]byte, 0, 2*len(raw))
	for i := 0; i < len(raw); i++ {
		buf = utf8.AppendRune(buf, bpeByteRune[raw[i]])
	}
	return string(buf)
}

// bpeUnByteLevel maps a byte-level token string back to raw bytes. As HF's
// ByteLevel decoder does, a token holding any rune outside the byte map
// (an added token such as "<｜User｜>") is taken as its own UTF-8 bytes.
// The bytes are appended to dst.
func bpeUnByteLevel(dst []byte, tok string) []byte {
	n := len(dst)
	for _, r := range tok {
		if r < 0 || int(r) >= len(bpeRuneByte) || bpeRuneByte[r] < 0 {
			return append(dst[:n], tok...)
		}
		dst = append(dst, byte(bpeRuneByte[r]))
	}
	return dst
}

// bpeMerge is the outcome of merging one ranked pair.
type bpeMerge struct {
	rank int32 // position in the merges list: lower merges first
	id   int32 // id of the merged token
}

func bpePairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// bpeSymbol is one live symbol of a word being merged, in a doubly linked
// list laid over the word's initial positions.
type bpeSymbol struct {
	id         int32
	prev, next int32 // neighbour positions, -1 at the ends
	dead       bool  // merged into its left neighbour
}

// bpeCand is a candidate merge of the symbol at pos with its right
// neighbour; left and right record the ids it was made for, so that a stale
// candidate (either side merged since) is recognised and dropped.
type bpeCand struct {
	rank        int32
	pos         int32
	left, right int32
}

func bpeCandLess(a, b bpeCand) bool {
	if a.rank != b.rank {
		return a.rank < b.rank
	}
	return a.pos < b.pos
}

// bpeHeap is a binary min-heap of candidates ordered by (rank, pos).
type bpeHeap []bpeCand

func (h *bpeHeap) push(c bpeCand) {
	*h = append(*h, c)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !bpeCandLess(s[i], s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *bpeHeap) pop() bpeCand {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && bpeCandLess(s[r], s[l]) {
			m = r
		}
		if !bpeCandLess(s[m], s[i]) {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}

// bpeMergeIDs merges the initial symbol ids of one word in place and returns
// the final ids (a prefix of a reused buffer is fine: the caller copies).
// merges maps a pair of ids to its rank and merged id.
func bpeMergeIDs(ids []int32, merges map[uint64]bpeMerge) []int32 {
	if len(ids) < 2 {
		return ids
	}
	syms := make([]bpeSymbol, len(ids))
	for i, id := range ids {
		syms[i] = bpeSymbol{id: id, prev: int32(i - 1), next: int32(i + 1)}
	}
	syms[len(syms)-1].next = -1
	h := make(bpeHeap, 0, len(ids))
	for i := 0; i+1 < len(ids); i++ {
		if m, ok := merges[bpePairKey(ids[i], ids[i+1])]; ok {
			h.push(bpeCand{rank: m.rank, pos: int32(i), left: ids[i], right: ids[i+1]})
		}
	}
	for len(h) > 0 {
		c := h.pop()
		s := &syms[c.pos]
		if s.dead || s.id != c.left || s.next < 0 {
			continue
		}
		r := &syms[s.next]
		if r.id != c.right {
			continue
		}
		m := merges[bpePairKey(c.left, c.right)]
		s.id = m.id
		r.dead = true
		s.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = c.pos
		}
		if s.prev >= 0 {
			p := syms[s.prev]
			if pm, ok := merges[bpePairKey(p.id, s.id)]; ok {
				h.push(bpeCand{rank: pm.rank, pos: s.prev, left: p.id, right: s.id})
			}
		}
		if s.next >= 0 {
			n := syms[s.next]
			if nm, ok := merges[bpePairKey(s.id, n.id)]; ok {
				h.push(bpeCand{rank: nm.rank, pos: c.pos, left: s.id, right: n.id})
			}
		}
	}
	out := ids[:0]
	for i := int32(0); i >= 0; i = syms[i].next {
		out = append(out, syms[i].id)
	}
	return out
}

// bpeCacheMax bounds the word cache; when it fills up it starts over
// (Hugging Face caps its cache the same way, at 10,000 words).
const (
	bpeCacheMax     = 1 << 16
	bpeCacheWordMax = 256 // longer words are not cached
)

// bpeCache maps a raw pre-token to its ids. It is safe for concurrent use.
type bpeCache struct {
	mu sync.RWMutex
	m  map[string][]int32
}

func (c *bpeCache) get(word string) ([]int32, bool) {
	c.mu.RLock()
	ids, ok := c.m[word]
	c.mu.RUnlock()
	return ids, ok
}

func (c *bpeCache) put(word string, ids []int32) {
	if len(word) > bpeCacheWordMax {
		return
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= bpeCacheMax {
		c.m = make(map[string][]int32)
	}
	c.m[word] = ids
	c.mu.Unlock()
}
