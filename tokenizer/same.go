package tokenizer

import "fmt"

// Same reports whether a and b are one vocabulary: the same size, the same
// BOS and EOS, and every id decoding to the same text. Models fed the same
// token ids (a mixture of bases reading one data set) need that; nil means
// they are interchangeable, else the error names the first difference.
func Same(a, b Tokenizer) error {
	switch {
	case a.VocabSize() != b.VocabSize():
		return fmt.Errorf("tokenizers differ: %d tokens against %d", a.VocabSize(), b.VocabSize())
	case a.BOS() != b.BOS() || a.EOS() != b.EOS():
		return fmt.Errorf("tokenizers differ: BOS/EOS %d/%d against %d/%d", a.BOS(), a.EOS(), b.BOS(), b.EOS())
	}
	id := make([]int32, 1)
	for i := range a.VocabSize() {
		id[0] = int32(i)
		if sa, sb := a.Decode(id), b.Decode(id); sa != sb {
			return fmt.Errorf("tokenizers differ: token %d is %q against %q", i, sa, sb)
		}
	}
	return nil
}
