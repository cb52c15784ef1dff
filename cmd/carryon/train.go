package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"carryon/coordinator"
	"carryon/dataset"
	"carryon/model"
	"carryon/protocol"
	"carryon/swarm"
)

func init() {
	register("train", "train a carry-on on one machine: base forward in-process, no network", runTrain)
}

func runTrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("train", "--model PATH|default --data FILE|default --out ADAPTOR.safetensors [flags]", stderr)
	jf := addJobFlags(fs)
	out := fs.String("out", "", "where to write the adaptor")
	seed := fs.Uint64("seed", 1, "initialisation and batch-order seed")
	logger := logFlags(fs, stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := jf.check(); err != nil {
		return err
	}
	device, closeDevice, err := jf.openDevice()
	if err != nil {
		return err
	}
	defer closeDevice()
	if *out == "" {
		fs.Usage()
		return errors.New("--out is required")
	}
	m, err := model.Open(*jf.model, model.OpenOptions{})
	if err != nil {
		return err
	}
	base, tok := m.Base, m.Tokenizer
	defer base.Close()
	ds, err := jf.readData(ctx, base, tok, dataset.Config{SeqLen: *jf.seqLen}, stdout)
	if err != nil {
		return err
	}
	cfg := jf.config(base)
	cfg.Logger, cfg.Train.Seed, cfg.Train.Device = logger(), *seed, device
	c, err := coordinator.New(nil, nil, base, cfg) // no host: nothing leaves this process
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(stdout, "base %s, data: %d training and %d validation chunks\n", shortHash(base.WeightsHash), len(ds.Train), len(ds.Val))
	embedBar, trainBar := newCounter(stdout, "embed", "chunks"), newCounter(stdout, "train", "steps")
	err = c.CollectLocal(ctx, ds, nil, func(p coordinator.LocalProgress) { embedBar.set(p.Done, p.Total) })
	if err != nil {
		return err
	}
	parentCID, err := storeParent(ctx, c.Store(), *jf.parent)
	if err != nil {
		return err
	}
	res, err := c.Train(ctx, ds, coordinator.Hooks{
		Parent: parentCID,
		Step: func(s coordinator.StepInfo) {
			trainBar.set(s.Step, *jf.steps)
			if s.Step == *jf.steps {
				fmt.Fprintf(stdout, "train: step %d loss %.4f lr %.2e grad-norm %.3f %.0f tok/s\n", s.Step, s.Loss, s.LR, s.GradNorm, s.TokensPerSec)
			}
		},
		Resumed: func(step int) {
			fmt.Fprintf(stdout, "resumed training at step %d (the checkpoint in --cache)\n", step)
		},
		Eval: func(e coordinator.EvalInfo) {
			fmt.Fprintf(stdout, "eval: step %d val loss %.4f (base %.4f) over %d tokens%s\n", e.Step, e.Loss, e.BaseLoss, e.Tokens, restoredNote(e))
		},
	})
	if err != nil {
		return err
	}
	blob, err := res.CarryOn.Marshal(res.Meta)
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, blob, 0o644); err != nil {
		return err
	}
	id, err := c.Store().AddBytes(ctx, blob)
	if err != nil {
		return err
	}
	if err := c.Store().Pin(ctx, id, "trained adaptor"); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "adaptor %s (%d parameters, %d bytes) -> %s\n", id, len(res.CarryOn.Params), len(blob), *out)
	for _, k := range []string{"train_loss", "val_loss", "val_base_loss"} {
		if v, ok := res.Meta.Metrics[k]; ok {
			fmt.Fprintf(stdout, "%s %.4f\n", k, v)
		}
	}
	return nil
}

// restoredNote marks a validation pass read back from a checkpoint.
func restoredNote(e coordinator.EvalInfo) string {
	if e.Restored {
		return ", from the checkpoint"
	}
	return ""
}

// storeParent resolves a --parent flag: a file is put into the store (and
// its CID returned), anything else must be a CID already there.
func storeParent(ctx context.Context, store *swarm.Blocks, spec string) (string, error) {
	if spec == "" {
		return "", nil
	}
	if data, err := os.ReadFile(spec); err == nil {
		id, err := store.AddBytes(ctx, data)
		if err == nil {
			err = store.Pin(ctx, id, "parent adaptor")
		}
		if err != nil {
			return "", fmt.Errorf("--parent %s: %w", spec, err)
		}
		return id.String(), nil
	}
	id, err := protocol.ParseCID(spec)
	if err != nil {
		return "", fmt.Errorf("--parent %q is neither a readable file nor a CID: %w", spec, err)
	}
	if !store.Has(ctx, id) {
		if hint := protocol.OldRawCIDHint(id); hint != "" {
			return "", fmt.Errorf("--parent %s is not in the store %s (%s)", spec, store.Dir(), hint)
		}
		return "", fmt.Errorf("--parent %s is not in the store %s (fetch it with 'carryon pull')", spec, store.Dir())
	}
	return id.String(), nil
}
