package tensor

// EmbeddingForward gathers rows of table.
//
//	out:   (n, d)
//	table: (vocab, d)
//	ids:   (n), each in [0, vocab)
func EmbeddingForward(out, table []float32, ids []int32, d int) {
	for i, id := range ids {
		copy(out[i*d:(i+1)*d], table[int(id)*d:int(id+1)*d])
	}
}

// EmbeddingBackward scatters dout back into the rows of dtable (repeated
// ids add up).
//
//	dtable: (vocab, d) += …
//	dout:   (n, d)
//	ids:    (n)
func EmbeddingBackward(dtable, dout []float32, ids []int32, d int) {
	for i, id := range ids {
		row := dtable[int(id)*d : int(id+1)*d]
		for j, g := range dout[i*d : (i+1)*d] {
			row[j] += g
		}
	}
}
