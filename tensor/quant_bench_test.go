package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// Bridge benchmarks at Qwen2.5-0.5B's width: 512 tokens of d = 896.
// Throughput (MB/s) counts float32 input bytes, encode and decode alike.
//
//	go test ./tensor/ -bench Codec -run XXX
const benchRows, benchD = 512, 896

var benchCodecs = []string{"q1", "q2", "q3", "q4", "q8", "bf16", "q4g64", "q4g64a", "q2g32a", "q8g32", "q6g128a"}

func benchInput() []float32 {
	x := make([]float32, benchRows*benchD)
	hiddenLike(rand.New(rand.NewPCG(42, 43)), x, benchD, 2)
	return x
}

func BenchmarkCodecEncode(b *testing.B) {
	x := benchInput()
	for _, name := range benchCodecs {
		c, err := ParseCodec(name)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			buf := make([]byte, 0, c.EncodedSize(benchRows, benchD))
			b.SetBytes(int64(4 * len(x)))
			b.ReportAllocs()
			for b.Loop() {
				buf = c.Encode(buf[:0], x, benchRows, benchD)
			}
		})
	}
}

func BenchmarkCodecDecode(b *testing.B) {
	x := benchInput()
	y := make([]float32, len(x))
	for _, name := range benchCodecs {
		c, err := ParseCodec(name)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			enc := c.Encode(nil, x, benchRows, benchD)
			b.SetBytes(int64(4 * len(x)))
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Decode(y, enc, benchRows, benchD); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// codecError measures a codec on x: (rows, d): relative L2 error over the
// whole tensor, mean per-token cosine similarity, and bytes per token.
func codecError(c Codec, x []float32, rows, d int) (relL2, cos float64, perToken int) {
	y := make([]float32, len(x))
	if err := c.Decode(y, c.Encode(nil, x, rows, d), rows, d); err != nil {
		panic(err)
	}
	var num, den float64
	for r := 0; r < rows; r++ {
		var dot, nx, ny float64
		for j := r * d; j < (r+1)*d; j++ {
			a, b := float64(x[j]), float64(y[j])
			num += (a - b) * (a - b)
			den += a * a
			dot += a * b
			nx += a * a
			ny += b * b
		}
		cos += dot / math.Sqrt(nx*ny)
	}
	return math.Sqrt(num / den), cos / float64(rows), c.EncodedSize(1, d)
}

var errorCodecs = []string{"q1", "q1g64", "q2", "q2g64", "q2g64a", "q3", "q3g64", "q3g64a", "q4", "q4g64", "q4g64a", "q4g32",
	"q8", "q8g64", "q8g64a", "bf16"}

// BenchmarkCodecError reports each setting's reconstruction error on
// simulated hidden states (d = 896, two outlier channels at 50x) as
// metrics: relL2, cos and B/token.
func BenchmarkCodecError(b *testing.B) {
	x := benchInput()
	for _, name := range errorCodecs {
		c, _ := ParseCodec(name)
		b.Run(name, func(b *testing.B) {
			var rel, cos float64
			var n int
			for b.Loop() {
				rel, cos, n = codecError(c, x, benchRows, benchD)
			}
			b.ReportMetric(rel, "relL2")
			b.ReportMetric(cos, "cos")
			b.ReportMetric(float64(n), "B/token")
		})
	}
}

// TestCodecErrorTable logs the reconstruction-error table (go test -v -run
// CodecErrorTable) and checks its shape: more bits never hurt, groups help
// against outlier channels, and the 8-bit and bf16 settings are close to
// lossless.
func TestCodecErrorTable(t *testing.T) {
	const rows = 64
	x := make([]float32, rows*benchD)
	hiddenLike(rand.New(rand.NewPCG(42, 43)), x, benchD, 2)
	var sb strings.Builder
	fmt.Fprintf(&sb, "d = %d, %d tokens, Gaussian channels (log-normal scales) + 2 outlier channels at 50x\n", benchD, rows)
	fmt.Fprintf(&sb, "%-8s %10s %10s %8s\n", "codec", "relL2", "cos", "B/token")
	rel := map[string]float64{}
	for _, name := range errorCodecs {
		c, _ := ParseCodec(name)
		r, cos, n := codecError(c, x, rows, benchD)
		rel[name] = r
		fmt.Fprintf(&sb, "%-8s %10.5f %10.6f %8d\n", name, r, cos, n)
	}
	t.Log("\n" + sb.String())
	for _, pair := range [][2]string{{"q2", "q1"}, {"q3", "q2"}, {"q4", "q3"}, {"q8", "q4"}, {"bf16", "q8"},
		{"q2g64", "q2"}, {"q3g64", "q3"}, {"q4g64", "q4"}, {"q8g64", "q8"}, {"q4g32", "q4g64"}, {"q4g64", "q3g64"}} {
		if !(rel[pair[0]] < rel[pair[1]]) {
			t.Errorf("%s relL2 %.4g is not below %s's %.4g", pair[0], rel[pair[0]], pair[1], rel[pair[1]])
		}
	}
	if rel["q8g64"] > 0.03 || rel["bf16"] > 0.004 {
		t.Errorf("q8g64 relL2 %.4g, bf16 %.4g: want < 0.03 and < 0.004", rel["q8g64"], rel["bf16"])
	}
}
