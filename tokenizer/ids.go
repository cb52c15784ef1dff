package tokenizer

// idTable is what both tokenizer kinds (BPETokenizer, SPMTokenizer) keep of
// their ids: the token of each id as stored in the vocabulary, the reverse
// map, and the BOS and EOS ids.
type idTable struct {
	tokens   []string         // id -> token as stored; "" for holes
	vocab    map[string]int32 // the model vocabulary: token -> id
	bos, eos int32            // -1: none
}

func newIDTable(tokens []string, vocab map[string]int32) idTable {
	return idTable{tokens: tokens, vocab: vocab, bos: -1, eos: -1}
}

// VocabSize is the number of ids (the largest id + 1, added tokens
// included). A model's embedding table may be larger (padded).
func (t *idTable) VocabSize() int { return len(t.tokens) }

// BOS returns the beginning-of-sequence id, or -1.
func (t *idTable) BOS() int32 { return t.bos }

// EOS returns the end-of-sequence id, or -1.
func (t *idTable) EOS() int32 { return t.eos }

// SetBOS and SetEOS override the ids read or guessed from the files (-1 for
// none). Call them before the tokenizer is shared.
func (t *idTable) SetBOS(id int32) { t.bos = id }
func (t *idTable) SetEOS(id int32) { t.eos = id }

// Token returns the token of id as stored in the vocabulary (byte-level
// form such as "Ġhello", or a SentencePiece piece with ▁), or "" for an
// unknown id.
func (t *idTable) Token(id int32) string {
	if id < 0 || int(id) >= len(t.tokens) {
		return ""
	}
	return t.tokens[id]
}
