package tensor

import "fmt"

// Unpack writes op(B) back from its packed copy: dst is (k, n) with leading
// dimension ldb, or (n, k) when transB, the layouts PackB takes. It lets a
// caller keep only the packed copy of a weight and still hand the matrix out
// (e.g. to save it). The values are exactly the ones packed (for
// PackBBF16, the bf16 values widened).
func (pb *PackedB) Unpack(transB bool, dst []float32, ldb int) {
	n, k, nr := pb.n, pb.k, pb.nr
	rows, cols := k, n // of dst
	if transB {
		rows, cols = n, k
	}
	if ldb < max(1, cols) || (rows > 0 && len(dst) < (rows-1)*ldb+cols) {
		panic(fmt.Sprintf("tensor.PackedB.Unpack: dst has %d floats with ldb %d, want (%d, %d)", len(dst), ldb, rows, cols))
	}
	if pb.half != nil { // bf16 pairs: (kpad/2, nr, 2) per panel, widened exactly
		for p0 := 0; p0 < k; p0 += pb.kc {
			kcur := min(pb.kc, k-p0)
			kpad := roundUp(kcur, 2)
			blk := pb.half[p0*pb.npad : p0*pb.npad+pb.npad*kpad]
			for j0 := 0; j0 < n; j0 += nr {
				panel := blk[j0*kpad : (j0+nr)*kpad]
				w := min(nr, n-j0)
				for p := 0; p < kcur; p++ {
					for j := 0; j < w; j++ {
						v := BF16ToF32(panel[(p>>1)*2*nr+2*j+p&1])
						if transB {
							dst[(j0+j)*ldb+p0+p] = v
						} else {
							dst[(p0+p)*ldb+j0+j] = v
						}
					}
				}
			}
		}
		return
	}
	for p0 := 0; p0 < k; p0 += pb.kc {
		kcur := min(pb.kc, k-p0)
		blk := pb.data[p0*pb.npad : p0*pb.npad+pb.npad*kcur]
		for j0 := 0; j0 < n; j0 += nr {
			panel := blk[j0*kcur : (j0+nr)*kcur] // (kcur, nr)
			w := min(nr, n-j0)
			for p := 0; p < kcur; p++ {
				for j := 0; j < w; j++ {
					if transB {
						dst[(j0+j)*ldb+p0+p] = panel[p*nr+j]
					} else {
						dst[(p0+p)*ldb+j0+j] = panel[p*nr+j]
					}
				}
			}
		}
	}
}
