package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"carryon/carryon"
	"carryon/coordinator"
	"carryon/internal/serve"
	"carryon/model"
	"carryon/protocol"
	"carryon/swarm"
)

// defaultStoreDir is the coordinator cache's adaptor store, where `carryon
// train` and `carryon coordinator` keep adaptors by CID.
func defaultStoreDir() string {
	return coordinator.StoreDir(defaultCoordinatorCache())
}

// defaultCoordinatorCache is the coordinator's --cache when none is given:
// the embedding cache, adaptor store and state directory that coordinator,
// train, eval, cache and roster share.
func defaultCoordinatorCache() string {
	return filepath.Join(model.DefaultCacheDir(), "coordinator")
}

// inference is what generate and eval run: a base with its tokenizer, the
// adaptor chain made for it (--adaptor), and the further bases of a
// mixture (--mix), checked to be exactly those the chain reads.
type inference struct {
	*model.Opened
	Stages   []carryon.Stage
	Models   []*carryon.Model // the stages' carry-ons, in order
	Mix      []*model.Base
	closeMix func()
}

// openInference opens --model (with oo), the adaptors of list (files or
// CIDs in storeDir) and the bases of mixList, and checks that they fit.
func openInference(spec string, oo model.OpenOptions, list, storeDir, mixList string) (*inference, error) {
	m, err := model.Open(spec, oo)
	if err != nil {
		return nil, err
	}
	in := &inference{Opened: m, closeMix: func() {}}
	fail := func(err error) (*inference, error) {
		in.Close()
		return nil, err
	}
	if in.Stages, err = loadAdaptors(list, storeDir, m.Base); err != nil {
		return fail(err)
	}
	in.Models = carryon.Models(in.Stages)
	mix, closeMix, err := openMixBases(mixList, spec, m.Tokenizer, oo.Load)
	if err != nil {
		return fail(err) // openMixBases left none open
	}
	in.Mix, in.closeMix = mix, closeMix
	if err := carryon.CheckMix(m.Base, in.Mix, in.Models); err != nil {
		return fail(err)
	}
	return in, nil
}

// MaxLen is the longest sequence every base of in can read.
func (in *inference) MaxLen() int {
	n := in.Base.Config.MaxPos
	for _, m := range in.Mix {
		n = min(n, m.Config.MaxPos)
	}
	return n
}

// Close closes the bases.
func (in *inference) Close() {
	in.closeMix()
	in.Base.Close()
}

// loadAdaptors resolves a comma-separated list of adaptor files or CIDs
// (looked up in the store at storeDir), in stage order, and checks that
// each was made for base and that each boosting stage follows its parent.
func loadAdaptors(list, storeDir string, base *model.Base) ([]carryon.Stage, error) {
	var chain []carryon.Stage
	for _, spec := range strings.Split(list, ",") {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		data, err := readAdaptor(spec, storeDir)
		if err != nil {
			return nil, err
		}
		st, err := carryon.DecodeStage(data, swarm.CIDOf(data).String(), base)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", spec, err)
		}
		chain = append(chain, st)
	}
	if err := carryon.CheckOrder(chain); err != nil {
		return nil, err
	}
	return chain, nil
}

// readAdaptor reads an adaptor file, or the adaptor with that CID from the
// local store (its hash is verified there).
func readAdaptor(spec, storeDir string) ([]byte, error) {
	data, ferr := os.ReadFile(spec)
	if ferr == nil {
		return data, nil
	}
	id, err := protocol.ParseCID(spec)
	if err != nil {
		return nil, fmt.Errorf("adaptor %s: neither a readable file (%v) nor a CID", spec, ferr)
	}
	store, err := swarm.OpenBlocks(storeDir)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	data, err = store.Get(context.Background(), id, 0)
	if errors.Is(err, swarm.ErrNotFound) {
		if hint := protocol.OldRawCIDHint(id); hint != "" {
			return nil, fmt.Errorf("adaptor %s is not in the store %s (%s)", spec, storeDir, hint)
		}
		return nil, fmt.Errorf("adaptor %s is not in the store %s (fetch it with 'carryon pull')", spec, storeDir)
	}
	return data, err
}

// stdin is what interactive commands read (tests replace it).
var stdin io.Reader = os.Stdin

func runGenerate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return generate(ctx, "generate", args, stdout, stderr)
}

// runChat is `carryon generate -i`.
func runChat(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return generate(ctx, "chat", append([]string{"--interactive"}, args...), stdout, stderr)
}

func generate(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	fs := newFlags(name, "--model PATH|default [--adaptor FILE|CID[,...]] (--prompt TEXT | -i) [flags]", stderr)
	modelFlag := addModelFlag(fs)
	adaptors := fs.String("adaptor", "", "adaptor files or CIDs, comma-separated, applied in order as boosting stages (empty: the base alone)")
	store := fs.String("store", defaultStoreDir(), "adaptor store where CIDs are looked up")
	alpha := fs.Float64("alpha", 1, "scale α of every stage's customisation (0: the base alone)")
	prompt := fs.String("prompt", "", "text to continue")
	interactive := fs.Bool("interactive", false, "chat: read messages from standard input, one per line, keeping the conversation (chat template); also -i")
	fs.BoolVar(interactive, "i", false, "short for --interactive")
	system := fs.String("system", "", "with -i: the system message")
	maxTokens := fs.Int("max-tokens", 128, "new tokens at most (per answer with -i)")
	temperature := fs.Float64("temperature", 0, "sampling temperature (0: greedy)")
	topK := fs.Int("top-k", 0, "sample among the k most likely tokens (0: all)")
	topP := fs.Float64("top-p", 1, "nucleus sampling: sample among the most likely tokens whose probabilities add up to this (1: all)")
	presence := fs.Float64("presence-penalty", 0, "subtracted from the logit of each token generated before (OpenAI's presence_penalty)")
	frequency := fs.Float64("frequency-penalty", 0, "times each token's count so far, subtracted from its logit (OpenAI's frequency_penalty)")
	var stops []string
	fs.Func("stop", "end the text before this string (repeat for several)", func(v string) error {
		if v == "" {
			return errors.New("an empty stop string")
		}
		stops = append(stops, v)
		return nil
	})
	seed := fs.Uint64("seed", 1, "sampling seed")
	stats := fs.Bool("stats", true, "print the token count and tokens/s to standard error at the end")
	bridge := addBridgeFlag(fs)
	mixFlag := addMixFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if (*prompt == "") == !*interactive {
		fs.Usage()
		return errors.New("give --prompt TEXT, or -i for a chat")
	}
	opt := carryon.GenerateOptions{MaxTokens: *maxTokens, Temperature: *temperature, TopK: *topK, TopP: *topP,
		PresencePenalty: *presence, FrequencyPenalty: *frequency, Seed: *seed, Bridge: *bridge}
	if *maxTokens < 1 {
		return fmt.Errorf("--max-tokens %d: want at least 1", *maxTokens)
	}
	if err := opt.SampleOptions().Validate(); err != nil {
		return err
	}
	set, err := openInference(*modelFlag, model.OpenOptions{}, *adaptors, *store, *mixFlag)
	if err != nil {
		return err
	}
	defer set.Close()
	base, tok, modelName, co, maxLen := set.Base, set.Tokenizer, set.Name, set.Models, set.MaxLen()
	opt.Mix = set.Mix
	report := func(r serve.StreamResult) {
		if *stats {
			fmt.Fprintf(stderr, "[%d prompt tokens, %d generated (%s); first token after %s, then %.1f tokens/s]\n",
				r.PromptTokens, r.Tokens, r.Finish, r.FirstToken.Round(time.Millisecond), r.TokensPerSec())
		}
	}
	if !*interactive {
		var ids []int32
		if bos := tok.BOS(); bos >= 0 {
			ids = append(ids, bos)
		}
		ids = append(ids, tok.Encode(*prompt)...)
		if len(ids) == 0 {
			return errors.New("--prompt: the prompt has no tokens")
		}
		res, err := serve.Stream(ctx, stdout, base, tok, co, float32(*alpha), ids, stops, opt)
		fmt.Fprintln(stdout)
		if err != nil {
			return err
		}
		report(res)
		return nil
	}

	// Chat: a line per message; the conversation is kept.
	conv := serve.NewConversation(tok, *system, maxLen)
	fmt.Fprintf(stderr, "chat with %s (%d adaptor stages); one message per line; /reset starts over, /bye or Ctrl-D ends\n", modelName, len(co))
	lines := make(chan string)
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
		readErr <- sc.Err()
		close(lines)
	}()
	for turn := 1; ; turn++ {
		fmt.Fprint(stdout, ">>> ")
		var line string
		select {
		case l, ok := <-lines:
			if !ok {
				fmt.Fprintln(stdout)
				return <-readErr
			}
			line = strings.TrimSpace(l)
		case <-ctx.Done():
			fmt.Fprintln(stdout)
			return ctx.Err()
		}
		switch line {
		case "":
			continue
		case "/bye", "/exit":
			return nil
		case "/reset":
			conv = serve.NewConversation(tok, *system, maxLen)
			fmt.Fprintln(stderr, "(the conversation starts over)")
			continue
		}
		dropped := conv.Dropped()
		ids, stopIDs, stopStrs, err := conv.Ask(line, *maxTokens)
		if errors.Is(err, serve.ErrTurnTooLong) {
			fmt.Fprintf(stderr, "(%v: not sent)\n", err)
			continue
		}
		if err != nil {
			return err
		}
		if n := conv.Dropped() - dropped; n > 0 {
			fmt.Fprintf(stderr, "(dropped the %d oldest messages to fit the context of %d tokens)\n", n, maxLen)
		}
		o := opt
		o.Stop, o.Seed = stopIDs, *seed+uint64(turn-1)
		res, err := serve.Stream(ctx, stdout, base, tok, co, float32(*alpha), ids, append(stopStrs, stops...), o)
		fmt.Fprintln(stdout)
		if err != nil {
			return err
		}
		conv.Answer(res.Text)
		report(res)
	}
}
