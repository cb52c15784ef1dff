package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"carryon/model"
	"carryon/tokenizer"
)

// embedOutput is the JSON that embed writes: for each sequence, one
// (positions, Dim) array per requested layer, in the order of Layers.
type embedOutput struct {
	Model       string     `json:"model"`
	WeightsHash string     `json:"weights_hash"`
	Arch        string     `json:"arch"`
	Dim         int        `json:"dim"`
	Layers      []string   `json:"layers"` // "final" or the block count k
	Sequences   []embedSeq `json:"sequences"`
}

type embedSeq struct {
	Tokens []int32       `json:"tokens"`
	Hidden [][][]float32 `json:"hidden"` // (len(Layers), T, Dim)
}

func runEmbed(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("embed", "--model PATH (--tokens IN.json | --text IN.json) [--layers final,K...] --out OUT.json", stderr)
	modelFlag := fs.String("model", "", "base model: a .gguf file, a directory with config.json + safetensors, or \"default\"")
	tokensFlag := fs.String("tokens", "", "JSON file holding a list of token-id lists, e.g. [[1,2,3],[4,5]]")
	textFlag := fs.String("text", "", "JSON file holding a list of strings, tokenized with the model's tokenizer (no BOS added)")
	layersFlag := fs.String("layers", "final", "comma-separated layers: final (after the final norm) or k = the residual stream after k blocks (0: embeddings)")
	outFlag := fs.String("out", "", "where to write the JSON result (- for stdout)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *modelFlag == "" || *outFlag == "" || (*tokensFlag == "") == (*textFlag == "") {
		fs.Usage()
		return errors.New("--model, --out and exactly one of --tokens and --text are required")
	}
	layers, names, err := parseLayers(*layersFlag)
	if err != nil {
		return err
	}
	m, err := model.Open(*modelFlag, model.OpenOptions{WithoutTokenizer: true})
	if err != nil {
		return err
	}
	base, tok, tokErr := m.Base, m.Tokenizer, m.TokenizerErr
	defer base.Close()
	seqs, err := readSequences(*tokensFlag, *textFlag, tok, tokErr)
	if err != nil {
		return err
	}
	res := embedOutput{Model: *modelFlag, WeightsHash: base.WeightsHash, Arch: base.Config.Arch, Dim: base.Config.Dim, Layers: names}
	D := base.Config.Dim
	if err := ctx.Err(); err != nil {
		return err
	}
	// One variable-length batch (split by ForwardBatch as needed).
	all, err := base.ForwardBatch(seqs, layers)
	if err != nil {
		return err
	}
	for i, ids := range seqs {
		hs := all[i]
		s := embedSeq{Tokens: ids, Hidden: make([][][]float32, len(hs))}
		for j, h := range hs {
			for p := 0; p < len(ids); p++ {
				s.Hidden[j] = append(s.Hidden[j], h[p*D:(p+1)*D])
			}
		}
		res.Sequences = append(res.Sequences, s)
	}
	return writeJSON(*outFlag, stdout, res)
}

// parseLayers reads "final,0,12" into Forward's layer list and the names
// written to the output.
func parseLayers(s string) ([]int, []string, error) {
	var layers []int
	var names []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "final" {
			layers, names = append(layers, model.FinalLayer), append(names, f)
			continue
		}
		k, err := strconv.Atoi(f)
		if err != nil || k < 0 {
			return nil, nil, fmt.Errorf("--layers: %q is neither final nor a block count >= 0", f)
		}
		layers, names = append(layers, k), append(names, strconv.Itoa(k))
	}
	return layers, names, nil
}

// maxEmbedInput caps the JSON input file.
const maxEmbedInput = 256 << 20

func readSequences(tokensPath, textPath string, tok tokenizer.Tokenizer, tokErr error) ([][]int32, error) {
	path := tokensPath
	if path == "" {
		path = textPath
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := json.NewDecoder(io.LimitReader(f, maxEmbedInput))
	if tokensPath != "" {
		var seqs [][]int32
		if err := dec.Decode(&seqs); err != nil {
			return nil, fmt.Errorf("%s: want a JSON list of token-id lists: %w", path, err)
		}
		return seqs, nil
	}
	if tok == nil {
		return nil, fmt.Errorf("--text: the model has no tokenizer that carryon can use (pass --tokens): %v", tokErr)
	}
	var texts []string
	if err := dec.Decode(&texts); err != nil {
		return nil, fmt.Errorf("%s: want a JSON list of strings: %w", path, err)
	}
	seqs := make([][]int32, len(texts))
	for i, s := range texts {
		seqs[i] = tok.Encode(s)
	}
	return seqs, nil
}

func writeJSON(path string, stdout io.Writer, v any) error {
	var w io.Writer = stdout
	var f *os.File
	if path != "-" {
		var err error
		if f, err = os.Create(path); err != nil {
			return err
		}
		w = f
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := json.NewEncoder(bw).Encode(v); err != nil {
		if f != nil {
			f.Close()
		}
		return err
	}
	if err := bw.Flush(); err != nil {
		if f != nil {
			f.Close()
		}
		return err
	}
	if f != nil {
		return f.Close()
	}
	return nil
}
