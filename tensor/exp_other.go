//go:build !amd64 || purego

package tensor

// No vector kernels: exp.go's portable loops run.
var expVector = false

func expSubSumVec(dst, src []float32, m float32) float64 { panic("unreachable") }
func swigluVec(out, gate, up []float32)                  { panic("unreachable") }
func sigmoidVec(out, x []float32, silu bool)             { panic("unreachable") }
func maxVec(x []float32) float32                         { panic("unreachable") }
func scaleVec(x []float32, s float32)                    { panic("unreachable") }
