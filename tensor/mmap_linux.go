package tensor

import "golang.org/x/sys/unix"

// adviseHugePages asks for transparent huge pages on an anonymous mapping
// (MADV_HUGEPAGE: honoured where THP is "madvise" or "always"). Streaming
// the packed weights of a decode step through 4 KiB pages costs a TLB miss
// every 4 KiB: eight layers of Qwen2.5-0.5B weights packed in an AllocFloats slab
// streamed at m = 1 went from 26-28 to 33-35 GB per CPU-second with it
// (Zen 5, 1 thread, load 4.5).
// Refusal is harmless: the pages stay small.
func adviseHugePages(mem []byte) { _ = unix.Madvise(mem, unix.MADV_HUGEPAGE) }
