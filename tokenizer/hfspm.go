package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"carryon/internal/capread"
)

// Hugging Face's tokenizer.json in SentencePiece form, as Llama-2,
// TinyLlama, Mistral and other sentencepiece models ship it beside (or
// instead of) tokenizer.model: spaces written as ▁ (by a Replace
// normalizer or a Metaspace pre-tokenizer), a ▁ put in front of the text
// (a Prepend normalizer or Metaspace's prepend_scheme), and either a BPE
// model with byte_fallback (<0xXX> tokens for characters without a token
// of their own) or a Unigram model (pieces with scores). Both become an
// *SPMTokenizer: the BPE form merges by its merges list's ranks, which
// LlamaConverter derived from the sentencepiece scores, so it tokenizes
// as llama.cpp does the GGUF of the same model (spm_test.go checks that
// on llama.cpp's golden vectors); the Unigram form segments by Viterbi
// as HF's Unigram model does.

// LoadHF reads a Hugging Face tokenizer.json in either form carryon
// knows: byte-level BPE (Qwen, Llama 3, GPT-2) as a *BPETokenizer, or
// SentencePiece (Llama 2, TinyLlama, Mistral) as an *SPMTokenizer. A
// tokenizer_config.json beside it sets BOS and EOS (bos_token,
// eos_token; for SentencePiece also add_bos_token false: no BOS).
func LoadHF(path string) (Tokenizer, error) {
	data, err := capread.ReadFile(path, TokMaxFileBytes)
	if err != nil {
		return nil, fmt.Errorf("read tokenizer %s: %w", path, err)
	}
	if !IsSPMJSON(data) {
		return LoadTokenizer(path)
	}
	t, err := parseSPMJSON(data)
	if err != nil {
		return nil, fmt.Errorf("read tokenizer %s: %w", path, err)
	}
	cfg, err := tokConfigBeside(t, path)
	if err != nil {
		return nil, fmt.Errorf("read tokenizer: %w", err)
	}
	var addBOS struct {
		AddBOS *bool `json:"add_bos_token"`
	}
	if cfg != nil && json.Unmarshal(cfg, &addBOS) == nil && addBOS.AddBOS != nil && !*addBOS.AddBOS {
		t.SetBOS(-1) // callers put BOS() in front when it is >= 0
	}
	return t, nil
}

// hfSPMJSON is the part of a SentencePiece-form tokenizer.json read here.
type hfSPMJSON struct {
	tokJSONSteps
	Model struct {
		Type                    string          `json:"type"`
		Vocab                   json.RawMessage `json:"vocab"` // BPE: {"piece": id}; Unigram: [["piece", score], ...]
		Merges                  json.RawMessage `json:"merges"`
		UnkToken                *string         `json:"unk_token"` // BPE
		UnkID                   *int64          `json:"unk_id"`    // Unigram
		ByteFallback            bool            `json:"byte_fallback"`
		IgnoreMerges            bool            `json:"ignore_merges"`
		Dropout                 *float64        `json:"dropout"`
		ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	} `json:"model"`
}

// hfSPMNode is a normalizer, pre-tokenizer or decoder step of the
// SentencePiece form.
type hfSPMNode struct {
	Type          string                   `json:"type"`
	Prepend       string                   `json:"prepend"` // Prepend
	Content       string                   `json:"content"` // Replace, Strip
	Pattern       struct{ String *string } // Replace
	Replacement   string                   `json:"replacement"` // Metaspace
	PrependScheme string                   `json:"prepend_scheme"`
	AddPrefix     *bool                    `json:"add_prefix_space"` // Metaspace before tokenizers 0.19
	Split         *bool                    `json:"split"`
	Start         int                      `json:"start"` // Strip
	Stop          int                      `json:"stop"`
	Normalizers   []hfSPMNode              `json:"normalizers"`
	Pretokenizers []hfSPMNode              `json:"pretokenizers"`
	Decoders      []hfSPMNode              `json:"decoders"`
}

// IsSPMJSON reports whether tokenizer.json data is in SentencePiece form
// (a Unigram model, or a BPE model with byte_fallback or with ▁ for
// spaces), not byte-level BPE.
func IsSPMJSON(data []byte) bool {
	var f struct {
		Normalizer   *hfSPMNode `json:"normalizer"`
		PreTokenizer *hfSPMNode `json:"pre_tokenizer"`
		Model        struct {
			Type         string `json:"type"`
			ByteFallback bool   `json:"byte_fallback"`
		} `json:"model"`
	}
	if json.Unmarshal(data, &f) != nil {
		return false // ParseTokenizer says what is wrong
	}
	if f.Model.Type == "Unigram" || f.Model.ByteFallback {
		return true
	}
	var spm func(n *hfSPMNode, depth int) bool
	spm = func(n *hfSPMNode, depth int) bool {
		if n == nil || depth > 8 {
			return false
		}
		if n.Type == "Metaspace" || n.Type == "Prepend" || n.Type == "Replace" && n.Content == spmSpace {
			return true
		}
		for _, c := range append(append([]hfSPMNode(nil), n.Normalizers...), n.Pretokenizers...) {
			if spm(&c, depth+1) {
				return true
			}
		}
		return false
	}
	return f.Model.Type == "BPE" && (spm(f.Normalizer, 0) || spm(f.PreTokenizer, 0))
}

// ParseSPMJSON builds the SentencePiece tokenizer of a tokenizer.json in
// SentencePiece form (see IsSPMJSON). BOS comes from the post-processor's
// template, EOS is </s> when there is one; LoadHF applies
// tokenizer_config.json over both.
func ParseSPMJSON(data []byte) (*SPMTokenizer, error) {
	return tokJSONNamed(parseSPMJSON(data))
}

// parseSPMJSON is ParseSPMJSON with errors that do not name the file.
func parseSPMJSON(data []byte) (*SPMTokenizer, error) {
	return tokParseJSON(data, func(f *hfSPMJSON) (*SPMTokenizer, error) {
		t, err := hfSPMBuild(f)
		if err != nil {
			return nil, fmt.Errorf("SentencePiece form: %w", err)
		}
		return t, nil
	})
}

func hfSPMBuild(f *hfSPMJSON) (*SPMTokenizer, error) {
	m := &f.Model
	c := SPMConfig{BOS: -1, EOS: -1, UNK: -1}
	if m.Dropout != nil && *m.Dropout != 0 {
		return nil, errors.New("BPE dropout is not supported")
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" || m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, errors.New("continuing_subword_prefix / end_of_word_suffix are not supported")
	}
	if m.IgnoreMerges {
		return nil, errors.New("ignore_merges is not supported in SentencePiece form")
	}
	byID := map[int32]string{}
	maxID := int32(-1)
	put := func(tok string, id int32) error {
		if id < 0 || id >= TokMaxVocab {
			return fmt.Errorf("token %q has id %d outside [0, %d)", tok, id, TokMaxVocab)
		}
		if prev, ok := byID[id]; ok && prev != tok {
			return fmt.Errorf("id %d is both %q and %q", id, prev, tok)
		}
		byID[id] = tok
		maxID = max(maxID, id)
		return nil
	}
	var unigram []float64
	switch m.Type {
	case "BPE":
		var vocab map[string]int32
		if err := json.Unmarshal(m.Vocab, &vocab); err != nil {
			return nil, fmt.Errorf("BPE vocab: %w", err)
		}
		for tok, id := range vocab {
			if err := put(tok, id); err != nil {
				return nil, err
			}
		}
		merges, err := tokParseMerges(m.Merges)
		if err != nil {
			return nil, err
		}
		c.Merges = merges
		if c.Merges == nil {
			c.Merges = [][2]string{}
		}
		if m.UnkToken != nil {
			id, ok := vocab[*m.UnkToken]
			if !ok {
				return nil, fmt.Errorf("unk_token %q is not in the vocabulary", *m.UnkToken)
			}
			c.UNK = id
		}
	case "Unigram":
		var vocab [][2]json.RawMessage
		if err := json.Unmarshal(m.Vocab, &vocab); err != nil {
			return nil, fmt.Errorf("Unigram vocab (want [[piece, score], ...]): %w", err)
		}
		if len(vocab) > TokMaxVocab {
			return nil, fmt.Errorf("%d tokens exceeds the cap of %d", len(vocab), TokMaxVocab)
		}
		unigram = make([]float64, len(vocab))
		for i, e := range vocab {
			var tok string
			if err := json.Unmarshal(e[0], &tok); err != nil {
				return nil, fmt.Errorf("Unigram vocab entry %d: %w", i, err)
			}
			if err := json.Unmarshal(e[1], &unigram[i]); err != nil {
				return nil, fmt.Errorf("Unigram vocab entry %d %q: score: %w", i, tok, err)
			}
			if err := put(tok, int32(i)); err != nil {
				return nil, err
			}
		}
		if m.UnkID != nil {
			if *m.UnkID < 0 || *m.UnkID >= int64(len(vocab)) {
				return nil, fmt.Errorf("unk_id %d is outside the vocabulary of %d", *m.UnkID, len(vocab))
			}
			c.UNK = int32(*m.UnkID)
		}
	default:
		return nil, fmt.Errorf("model type %q (supported: BPE, Unigram)", m.Type)
	}
	// Added tokens are split out of the raw text, as llama.cpp splits its
	// special tokens; HF matches a "normalized" one in the text after the
	// ▁ normalizer, which differs only for a token holding a space.
	added := map[int32]tokJSONAdded{}
	for _, a := range f.AddedTokens {
		if a.Normalized && strings.ContainsAny(a.Content, " "+spmSpace) {
			return nil, fmt.Errorf("added token %q: a normalized added token with a space is not supported in SentencePiece form", a.Content)
		}
		if a.LStrip || a.SingleWord {
			return nil, fmt.Errorf("added token %q: lstrip and single_word are not supported in SentencePiece form", a.Content)
		}
		if err := put(a.Content, a.ID); err != nil {
			return nil, err
		}
		added[a.ID] = a
	}
	if int(maxID)+1 != len(byID) {
		return nil, fmt.Errorf("ids are not dense: %d tokens, largest id %d", len(byID), maxID)
	}
	c.Tokens = make([]string, maxID+1)
	c.Types = make([]int32, maxID+1)
	for id, tok := range byID {
		c.Tokens[id] = tok
		a, isAdded := added[id]
		_, isByte := spmByteValue(tok)
		switch {
		case id == c.UNK:
			c.Types[id] = SPMTypeUnknown
		case isAdded && a.Special:
			c.Types[id] = SPMTypeControl
		case isAdded:
			c.Types[id] = SPMTypeUserDefined
		case isByte && m.ByteFallback:
			c.Types[id] = SPMTypeByte
		default:
			c.Types[id] = SPMTypeNormal
		}
		if isAdded && a.RStrip {
			c.RStrip = append(c.RStrip, id)
		}
	}
	if unigram != nil {
		c.UnigramScores = append(unigram, make([]float64, len(c.Tokens)-len(unigram))...)
	}
	if err := hfSPMSpaces(f, &c); err != nil {
		return nil, err
	}
	if err := hfSPMCheckDecoder(f.Decoder); err != nil {
		return nil, err
	}
	t, err := NewSPMTokenizer(c)
	if err != nil {
		return nil, err
	}
	if t.bos, err = postProcessorBOS(t, f.PostProcessor, t.bos); err != nil {
		return nil, err
	}
	if id, ok := t.ID("</s>"); ok {
		t.eos = id
	}
	return t, nil
}

// hfSPMSpaces reads how spaces become ▁ and where the space prefix goes:
// a Replace(" " → "▁") normalizer with a Prepend("▁") before it (Llama-2's
// legacy form: a prefix in front of every piece of text between special
// tokens, as llama.cpp's dummy prefix), or a Metaspace pre-tokenizer (a
// prefix unless the text starts with a space: always, or for
// prepend_scheme "first" only at the start of the text).
func hfSPMSpaces(f *hfSPMJSON, c *SPMConfig) error {
	replace, prepend := false, false
	if !tokIsNull(f.Normalizer) {
		var n hfSPMNode
		if err := json.Unmarshal(f.Normalizer, &n); err != nil {
			return fmt.Errorf("normalizer: %w", err)
		}
		steps := []hfSPMNode{n}
		if n.Type == "Sequence" {
			steps = n.Normalizers
		}
		for _, s := range steps {
			switch {
			case s.Type == "Prepend" && s.Prepend == spmSpace && !replace:
				prepend = true
			case s.Type == "Replace" && s.Pattern.String != nil && *s.Pattern.String == " " && s.Content == spmSpace:
				replace = true
			default:
				return fmt.Errorf("normalizer step %q is not supported in SentencePiece form (supported: Prepend ▁, then Replace \" \" with ▁)", s.Type)
			}
		}
	}
	metaspace, split := false, false
	scheme := "never"
	if !tokIsNull(f.PreTokenizer) {
		var n hfSPMNode
		if err := json.Unmarshal(f.PreTokenizer, &n); err != nil {
			return fmt.Errorf("pre_tokenizer: %w", err)
		}
		if n.Type == "Sequence" && len(n.Pretokenizers) == 1 {
			n = n.Pretokenizers[0]
		}
		if n.Type != "Metaspace" || n.Replacement != spmSpace {
			return fmt.Errorf("pre_tokenizer %q is not supported in SentencePiece form (supported: none, Metaspace with ▁)", n.Type)
		}
		metaspace = true
		split = n.Split == nil || *n.Split // HF's default is true
		switch {
		case n.PrependScheme != "":
			scheme = n.PrependScheme
		case n.AddPrefix == nil || *n.AddPrefix:
			scheme = "always"
		}
		if scheme != "always" && scheme != "first" && scheme != "never" {
			return fmt.Errorf("pre_tokenizer: Metaspace prepend_scheme %q (want always, first or never)", scheme)
		}
	}
	if !replace && !metaspace {
		return errors.New("spaces are not written as ▁ (want a Replace normalizer or a Metaspace pre-tokenizer)")
	}
	switch {
	case prepend:
		c.AddSpacePrefix = true // Metaspace then finds the ▁ there already
	case metaspace && scheme != "never":
		c.AddSpacePrefix, c.PrefixUnlessSpace, c.PrefixFirstOnly = true, true, scheme == "first"
	}
	c.SplitWords = metaspace && split
	return nil
}

// hfSPMCheckDecoder accepts the decoders of the SentencePiece form:
// Replace ▁ with a space, ByteFallback, Fuse, Strip and Metaspace, alone
// or in a Sequence. What they do is what SPMTokenizer.Decode does.
func hfSPMCheckDecoder(raw json.RawMessage) error {
	if tokIsNull(raw) {
		return nil
	}
	var n hfSPMNode
	if err := json.Unmarshal(raw, &n); err != nil {
		return fmt.Errorf("decoder: %w", err)
	}
	steps := []hfSPMNode{n}
	if n.Type == "Sequence" {
		steps = n.Decoders
	}
	for _, s := range steps {
		switch s.Type {
		case "Replace", "ByteFallback", "Fuse", "Strip", "Metaspace":
		default:
			return fmt.Errorf("decoder %q is not supported in SentencePiece form (want Replace, ByteFallback, Fuse, Strip or Metaspace)", s.Type)
		}
	}
	return nil
}
