package cuda

// kernelModules lists, per PTX file under kernels/ (built from the .cu file
// of the same name by kernels/build.sh), the kernels the Go side launches.
// A plain build's tests (kernels_test.go) check that each is defined in
// the committed PTX and that the PTX is up to date with its source.
var kernelModules = map[string][]string{
	"norm":        {"rmsnorm_fwd", "rmsnorm_bwd_dx", "rmsnorm_bwd_dw"},
	"rope":        {"rope"},
	"attention":   {"attn_fwd", "attn_bwd"},
	"elementwise": {"add_inplace", "scale", "add_bias", "swiglu_fwd", "swiglu_bwd", "sigmoid_fwd", "sigmoid_bwd", "mul_fwd", "mul_bwd", "embed_f32", "embed_bf16", "f32_to_bf16", "bf16_to_f32", "sumsq"},
	"xent":        {"softmax_xent"},
	"adamw":       {"adamw"},
	"codec":       {"encode_sym", "encode_bf16"},
}

// Attention tiling, as #defined in kernels/attention.cu.
const (
	attBQ     = 16 // query rows per block
	attBK     = 32 // keys per shared-memory tile
	attWarps  = 4
	attMaxHD  = 128 // forward: at most 4 dimensions per lane
	attBackHD = 64  // backward: dq in 2 dimensions per lane, shared accumulators
)

// attnFwdShared and attnBwdShared are the dynamic shared memory in bytes of
// attn_fwd and attn_bwd (see kernels/attention.cu); both stay within the
// 48 KiB a launch gets without opting in.
func attnFwdShared(hd int) int { return 4 * (attBQ*hd + attBK*(hd+1) + attBK*hd) }
func attnBwdShared(hd int) int { return 4 * (2*attBQ*hd + 4*attBK*(hd+1)) }
