// Indexes of the scheduler: a binary heap whose items know their place
// (so update and removal cost O(log n)) and a double-ended queue.

package coordinator

// iheap is a binary min-heap under less. Each item keeps its own index
// in the heap at *pos(item) (-1 when it is not in the heap), so fix and
// remove find it without a search. Not safe for concurrent use: the
// loop's goroutine owns it.
type iheap[T any] struct {
	items []T
	less  func(a, b T) bool
	pos   func(T) *int
}

func newHeap[T any](less func(a, b T) bool, pos func(T) *int) iheap[T] {
	return iheap[T]{less: less, pos: pos}
}

func (h *iheap[T]) len() int { return len(h.items) }

// has reports whether x is in the heap.
func (h *iheap[T]) has(x T) bool {
	i := *h.pos(x)
	return i >= 0 && i < len(h.items)
}

// peek returns the least item; the heap must not be empty.
func (h *iheap[T]) peek() T { return h.items[0] }

// set inserts x, or moves it after its key changed: O(log n).
func (h *iheap[T]) set(x T) {
	if h.has(x) {
		h.fix(*h.pos(x))
		return
	}
	h.items = append(h.items, x)
	*h.pos(x) = len(h.items) - 1
	h.up(len(h.items) - 1)
}

// remove takes x out if it is in: O(log n).
func (h *iheap[T]) remove(x T) {
	if !h.has(x) {
		return
	}
	i, last := *h.pos(x), len(h.items)-1
	if i != last {
		h.swap(i, last)
	}
	h.items = h.items[:last]
	*h.pos(x) = -1
	var zero T
	h.items = append(h.items, zero)[:last] // drop the reference
	if i != last {
		h.fix(i)
	}
}

// pop removes and returns the least item; the heap must not be empty.
func (h *iheap[T]) pop() T {
	x := h.items[0]
	h.remove(x)
	return x
}

func (h *iheap[T]) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h *iheap[T]) swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	*h.pos(h.items[i]) = i
	*h.pos(h.items[j]) = j
}

func (h *iheap[T]) up(j int) {
	for j > 0 {
		i := (j - 1) / 2
		if !h.less(h.items[j], h.items[i]) {
			break
		}
		h.swap(i, j)
		j = i
	}
}

// down sifts item i down; it reports whether the item moved.
func (h *iheap[T]) down(i0 int) bool {
	i, n := i0, len(h.items)
	for {
		j := 2*i + 1
		if j >= n {
			break
		}
		if r := j + 1; r < n && h.less(h.items[r], h.items[j]) {
			j = r
		}
		if !h.less(h.items[j], h.items[i]) {
			break
		}
		h.swap(i, j)
		i = j
	}
	return i > i0
}

// deque is a ring buffer of chunks: push and pop at both ends in O(1)
// amortized (the pending queue: failures go back to the front).
type deque struct {
	buf        []*chunkState
	head, size int
}

func (d *deque) len() int { return d.size }

func (d *deque) grow() {
	if d.size < len(d.buf) {
		return
	}
	nb := make([]*chunkState, max(16, 2*len(d.buf)))
	for i := range d.size {
		nb[i] = d.buf[(d.head+i)%len(d.buf)]
	}
	d.buf, d.head = nb, 0
}

func (d *deque) pushBack(cs *chunkState) {
	d.grow()
	d.buf[(d.head+d.size)%len(d.buf)] = cs
	d.size++
}

func (d *deque) pushFront(cs *chunkState) {
	d.grow()
	d.head = (d.head - 1 + len(d.buf)) % len(d.buf)
	d.buf[d.head] = cs
	d.size++
}

// front returns the first chunk; the deque must not be empty.
func (d *deque) front() *chunkState { return d.buf[d.head] }

func (d *deque) popFront() *chunkState {
	cs := d.buf[d.head]
	d.buf[d.head] = nil
	d.head = (d.head + 1) % len(d.buf)
	d.size--
	return cs
}
