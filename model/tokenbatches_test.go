package model

import (
	"fmt"
	"testing"
)

// TestTokenBatches: runs keep the order, stay within the budget, and a
// sequence over it runs alone.
func TestTokenBatches(t *testing.T) {
	seq := func(n int) []int32 { return make([]int32, n) }
	for _, tc := range []struct {
		lens []int
		want string
	}{
		{nil, "[]"},
		{[]int{3}, "[[3]]"},
		{[]int{2, 2, 2}, "[[2 2] [2]]"},
		{[]int{4, 1, 5, 2, 2}, "[[4] [1] [5] [2 2]]"},
		{[]int{1, 1, 1, 1}, "[[1 1 1 1]]"},
	} {
		var seqs [][]int32
		for _, n := range tc.lens {
			seqs = append(seqs, seq(n))
		}
		var got [][]int
		for _, run := range TokenBatches(seqs, 4) {
			var lens []int
			for _, s := range run {
				lens = append(lens, len(s))
			}
			got = append(got, lens)
		}
		if s := fmt.Sprint(got); s != tc.want {
			t.Errorf("%v: runs %s, want %s", tc.lens, s, tc.want)
		}
	}
}
