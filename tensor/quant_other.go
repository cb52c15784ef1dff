//go:build !amd64 || purego

package tensor

// Without amd64 assembly (arm64, other architectures, purego builds) the
// quantised and 16-bit weights are decoded in Go and int8 products run on
// the Go kernel only (NEON SDOT is not written yet).

// decodeQ8_0Blocks decodes len(y)/32 whole Q8_0 blocks of x into y.
func decodeQ8_0Blocks(y []float32, x []byte) { decodeQ8_0BlocksGo(y, x) }

// decodeQ4KBlocks decodes len(y)/256 whole Q4_K blocks of x into y.
func decodeQ4KBlocks(y []float32, x []byte) { decodeQ4KBlocksGo(y, x) }

// decodeQ6KBlocks decodes len(y)/256 whole Q6_K blocks of x into y.
func decodeQ6KBlocks(y []float32, x []byte) { decodeQ6KBlocksGo(y, x) }

// widenHalf widens len(y) 16-bit floats (bf16, or IEEE f16) of x into y.
func widenHalf(y []float32, x []byte, bf16 bool) { widenHalfGo(y, x, bf16) }

// q8Available lists the int8 implementations this build runs.
var q8Available = []*q8Kernels{q8Go}

// q8pAvailable lists the packed int8 implementations this build runs.
var q8pAvailable = []*q8pKernels{q8pGo}
