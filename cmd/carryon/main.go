// Command carryon is the one binary of carryon: a volunteer node, a
// coordinator, the in-process demo, and the tools around adaptors.
//
// It only parses flags and wires the packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"carryon/internal/service"
)

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands are the subcommands by name, filled from commandList (in init:
// the commands' flag sets read their summaries here).
var commands = map[string]command{}

// commandList is every subcommand: its name, the summary `carryon help`
// prints, and the function that parses its flags and runs it.
var commandList = []struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}{
	{"add", "add files (adaptors) to the block store as UnixFS and pin them; prints their CIDs (the same as `ipfs add --cid-version=1 --raw-leaves`)", runAdd},
	{"bench", "benchmarks: 'bench train' (carry-on training vs PyTorch), 'bench forward' (base prefill), 'bench serve' (the HTTP server under load)", runBench},
	{"cache", "list (ls) or garbage-collect (gc) a coordinator's embedding cache and block store", runCache},
	{"coordinator", "lease a data set's chunks to nodes, train a carry-on on the embeddings, publish it", runCoordinator},
	{"demo", "run the whole loop in one process: a coordinator and two nodes in a private swarm on loopback", runDemo},
	{"embed", "run a base model's forward pass over token ids or texts and write hidden states as JSON", runEmbed},
	{"eval", "score a base and its adaptor on GSM8K-style question/answer JSONL: answer loss, perplexity, exact match", runEval},
	{"experiment", "run the GSM8K experiments (docs/experiments.md): results JSON, tables and SVG plots", runExperiment},
	{"generate", "generate text with a base model and carry-on adaptor stages, streamed as it comes (-i: chat)", runGenerate},
	{"chat", "chat with a base model and its adaptors in the terminal (generate -i)", runChat},
	{"keygen", "write a new private-swarm pre-shared key", runKeygen},
	{"node", "volunteer: serve a base model's forward pass to the swarm", runNode},
	{"pretrain", "train a small base model (BPE tokenizer + Qwen2 transformer) from scratch on a text corpus, or continue one (--init)", runPretrain},
	{"pull", "fetch an adaptor (any UnixFS file) by CID over bitswap from peers that have it, verifying every block", runPull},
	{"roster", "a closed swarm's members: add, remove or list the peer IDs a coordinator admits (signed with its key)", runRoster},
	{"search", "train many small carry-ons (width, depth, LR, sources; α chosen on validation) over one embedding cache, several at once: table and Pareto plots", runSearch},
	{"serve", "serve a base and its carry-on adaptors over an OpenAI-style HTTP API", runServe},
	{"status", "the job at a glance: ask a coordinator's dashboard (--http) for its status", runStatus},
	{"synth", "generate GSM8K-style arithmetic word problems (<<a*b=c>> steps, #### N answers) by program: pretraining text or task JSONL", runSynth},
	{"train", "train a carry-on on one machine: base forward in-process (or the embeddings fetched by CID from a peer's cache with --from-swarm)", runTrain},
	{"version", "print version, commit, Go version, CPU features and whether CUDA is built in", runVersion},
}

func init() {
	for _, c := range commandList {
		commands[c.name] = command{summary: c.summary, run: c.run}
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "carryon customises an open-weights LLM with a carry-on network trained on a volunteer swarm.\n\n")
	fmt.Fprintf(w, "Usage: carryon <command> [flags]\n\nCommands:\n")
	var names []string
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "\nRun 'carryon <command> --help' for a command's flags.\n")
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// exitInterrupted is the exit code of a command stopped by SIGINT or
// SIGTERM (128 + SIGINT, as shells report it).
const exitInterrupted = 130

// run dispatches to a subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "carryon: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	if args[0] == "node" && service.IsWindowsService() {
		return runNodeService(args[1:])
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.run(ctx, args[1:], stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			// Ctrl-C or SIGTERM: the user's own act, not a failure to
			// explain in the terms of the code it stopped.
			fmt.Fprintf(stderr, "carryon %s: interrupted\n", args[0])
			return exitInterrupted
		}
		fmt.Fprintf(stderr, "carryon %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// newFlags makes a flag set whose --help prints the summary and flags.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: carryon %s %s\n\n%s\n\nFlags:\n", name, synopsis, commands[name].summary)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses the flags of a command that takes no other arguments
// and refuses what they cannot carry: an argument that is not a flag, and
// a required flag left empty (each named, with the usage).
func parseFlags(fs *flag.FlagSet, args []string, required ...string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var missing []string
	for _, name := range required {
		if fs.Lookup(name).Value.String() == "" {
			missing = append(missing, "--"+name)
		}
	}
	switch n := len(missing); n {
	case 0:
		return nil
	case 1:
		fs.Usage()
		return fmt.Errorf("%s is required", missing[0])
	default:
		fs.Usage()
		return fmt.Errorf("%s and %s are required", strings.Join(missing[:n-1], ", "), missing[n-1])
	}
}

// addModelFlag adds --model: the base model, as model.Open reads it.
func addModelFlag(fs *flag.FlagSet) *string {
	return fs.String("model", "default", `base model: a Hugging Face directory (config.json + safetensors), a .gguf file, "default" (the embedded base) or "tiny" (the small embedded base)`)
}

// addExactBF16Flag adds --exact-bf16 (model.LoadOptions.ExactBF16).
func addExactBF16Flag(fs *flag.FlagSet) *bool {
	return fs.Bool("exact-bf16", false, "BF16 weights: multiply them exactly with the float32 activations (widened inside each product) instead of rounding the activations to bf16 first (the default, as llama.cpp; VDPBF16PS where the CPU has AVX512_BF16, about twice as fast). Nodes and their coordinator must agree: the numerics are part of the base's identity in the swarm (model.LoadOptions.ExactBF16)")
}

// addQAFlag adds --data: question/answer JSONL as eval, experiment and
// search read it.
func addQAFlag(fs *flag.FlagSet) *string {
	return fs.String("data", "", "GSM8K-style JSONL with question and answer fields (the answer ends with '#### N')")
}

// addScratchCacheFlag adds --cache as experiment and search read it: the
// embedding cache, a temporary one by default.
func addScratchCacheFlag(fs *flag.FlagSet) *string {
	return fs.String("cache", "", "embedding cache directory (default: a temporary one, removed at the end)")
}

// addBridgeFlag adds --bridge: the codec base hidden states go through
// before the carry-on reads them.
func addBridgeFlag(fs *flag.FlagSet) *string {
	return fs.String("bridge", "", "round-trip base hidden states through this bridge codec first, as in training (empty: exact)")
}

// logFlags adds -v and returns a constructor for the command's logger.
func logFlags(fs *flag.FlagSet, stderr io.Writer) func() *slog.Logger {
	verbose := fs.Bool("v", false, "log debug detail (per chunk and per message)")
	quiet := fs.Bool("q", false, "log warnings and errors only")
	return func() *slog.Logger {
		level := slog.LevelInfo
		if *verbose {
			level = slog.LevelDebug
		}
		if *quiet {
			level = slog.LevelWarn
		}
		return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	}
}

// shortHash abbreviates a weights hash for people.
func shortHash(h string) string {
	if len(h) > 16 {
		return h[:16]
	}
	return h
}
