package serve

// The adaptors a server holds: loading and checking them, resolving a
// request's model, on-demand loading and eviction, and the fetchers that
// find adaptor files by CID (a local store, peers of the swarm).

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"time"

	"github.com/ipfs/go-cid"

	"carryon/carryon"
	"carryon/protocol"
	"carryon/swarm"
)

// FetchFunc returns the adaptor file named c. The server verifies the bytes
// against c itself.
type FetchFunc func(ctx context.Context, c cid.Cid) ([]byte, error)

// FromStore reads adaptors from store. With x non-nil (an exchange over
// the same store), an adaptor the store lacks is first fetched over bitswap
// from the swarm (every block hash-checked, the file within maxSize bytes;
// <= 0: protocol.MaxFileBytes) and pinned there, so this peer serves it on.
func FromStore(store *swarm.Blocks, x *swarm.Exchange, maxSize int64) FetchFunc {
	return func(ctx context.Context, c cid.Cid) ([]byte, error) {
		data, err := store.Get(ctx, c, maxSize)
		if err == nil || !errors.Is(err, swarm.ErrNotFound) || x == nil {
			return data, err
		}
		if _, err := x.Fetch(ctx, c, swarm.Limits{MaxSize: maxSize}); err != nil {
			if hint := protocol.OldRawCIDHint(c); hint != "" {
				return nil, fmt.Errorf("%w (%s)", err, hint)
			}
			return nil, err
		}
		if err := store.Pin(ctx, c, "pulled adaptor"); err != nil {
			return nil, fmt.Errorf("serve: keeping %s: %w", c, err)
		}
		return store.Get(ctx, c, maxSize)
	}
}

// Errors of resolving a request's model (each answered with a 400).
var (
	// ErrUnknownModel: the model is not loaded and cannot be fetched.
	ErrUnknownModel = errors.New("unknown model")
	// ErrInvalidAdaptor: the adaptor file does not decode, or does not fit
	// the base (widths, vocabulary, sources, chain).
	ErrInvalidAdaptor = errors.New("invalid adaptor")
)

// BaseMismatchError is the error for an adaptor trained on another base.
type BaseMismatchError struct {
	CID     string // the adaptor
	Adaptor string // the base weights hash its metadata names ("" for none)
	Base    string // this server's base weights hash
}

func (e *BaseMismatchError) Error() string {
	if e.Adaptor == "" {
		return fmt.Sprintf("adaptor %s names no base weights hash, so it cannot be checked against this base %s", e.CID, e.Base)
	}
	return fmt.Sprintf("adaptor %s was trained on base %s, this server's base is %s", e.CID, e.Adaptor, e.Base)
}

// maxChain bounds a boosting chain's length (root to the adaptor).
const maxChain = 64

// validName is the syntax of an adaptor's short name.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$`)

// adaptor is one loaded adaptor.
type adaptor struct {
	name     string // short name, "" for none (then the CID names it)
	cid      string
	meta     carryon.Meta
	stages   []*carryon.Model // the chain root..this adaptor, applied in order
	chain    []string         // their CIDs
	created  time.Time
	onDemand bool  // loaded for a request, evictable
	seq      int64 // load order, from Server.clock
	used     int64 // last use, from Server.clock; guarded by Server.mu
}

// id is how /v1/models names the adaptor.
func (a *adaptor) id() string {
	if a.name != "" {
		return a.name
	}
	return a.cid
}

func (a *adaptor) card() ModelCard {
	return ModelCard{ID: a.id(), Object: "model", Created: a.created.Unix(), OwnedBy: "carryon",
		CID: a.cid, BaseHash: a.meta.BaseHash, Parent: a.meta.Parent, Stages: a.chain,
		Step: a.meta.Step, OnDemand: a.onDemand}
}

// Add loads the adaptor file data under name (may be "": the CID names it)
// and returns its card. Its metadata must name this base's weights hash
// (else a *BaseMismatchError), and its boosting parent, if any, must be
// loaded already or fetchable by Config.Fetch (it is then loaded on demand).
// Adding an adaptor that is loaded already gives it the name (when it has
// none) and makes it permanent.
func (s *Server) Add(ctx context.Context, name string, data []byte) (ModelCard, error) {
	if name != "" && (!validName.MatchString(name) || name == BaseModel) {
		return ModelCard{}, fmt.Errorf("serve.Add: name %q: want 1..128 of [A-Za-z0-9._:/-], not %q", name, BaseModel)
	}
	if name != "" {
		if _, err := protocol.ParseCID(name); err == nil {
			return ModelCard{}, fmt.Errorf("serve.Add: name %q is a CID: a name must not look like one", name)
		}
	}
	if err := s.lockLoad(ctx); err != nil {
		return ModelCard{}, err
	}
	defer s.unlockLoad()
	a, err := s.load(ctx, data, 0)
	if err != nil {
		return ModelCard{}, fmt.Errorf("serve.Add: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if name != "" && a.name != name {
		if other, ok := s.models[name]; ok && other != a {
			return ModelCard{}, fmt.Errorf("serve.Add: name %q is taken by %s", name, other.cid)
		}
		if a.name != "" {
			return ModelCard{}, fmt.Errorf("serve.Add: %s is loaded already as %q", a.cid, a.name)
		}
		a.name = name
		s.models[name] = a
	}
	a.onDemand = false
	return a.card(), nil
}

// lockLoad takes the load lock (one load at a time) unless ctx ends first.
func (s *Server) lockLoad(ctx context.Context) error {
	select {
	case s.loadMu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) unlockLoad() { <-s.loadMu }

// load decodes and checks data and registers it (on demand, without a
// name) unless its CID is loaded already; parents not loaded are fetched.
// The caller holds the load lock.
func (s *Server) load(ctx context.Context, data []byte, depth int) (*adaptor, error) {
	id := swarm.CIDOf(data).String()
	s.mu.Lock()
	a, ok := s.models[id]
	s.mu.Unlock()
	if ok {
		return a, nil
	}
	if depth >= maxChain {
		return nil, fmt.Errorf("adaptor %s: %w: boosting chain longer than %d", id, ErrInvalidAdaptor, maxChain)
	}
	co, meta, err := carryon.Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("adaptor %s: %w: %w", id, ErrInvalidAdaptor, err)
	}
	if _, err := carryon.DecodeStage(data, id, s.base); err != nil {
		// Decoded above: what is left is the base check.
		return nil, &BaseMismatchError{CID: id, Adaptor: meta.BaseHash, Base: s.base.WeightsHash}
	}
	var parent *adaptor
	if meta.Parent != "" {
		if parent, err = s.loadCID(ctx, meta.Parent, depth+1); err != nil {
			return nil, fmt.Errorf("adaptor %s is a boosting stage on top of %s: %w", id, meta.Parent, err)
		}
	}
	a = &adaptor{cid: id, meta: meta, created: time.Now(), onDemand: true}
	if parent != nil {
		a.stages = append(a.stages, parent.stages...)
		a.chain = append(a.chain, parent.chain...)
	}
	a.stages = append(a.stages, co)
	a.chain = append(a.chain, id)
	if err := carryon.CheckStages(s.base, s.cfg.Mix, a.stages); err != nil {
		return nil, fmt.Errorf("adaptor %s: %w: %w", id, ErrInvalidAdaptor, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clock++
	a.seq, a.used = s.clock, s.clock
	s.models[id] = a
	s.evict()
	return a, nil
}

// loadCID returns the adaptor with CID str, fetching it when not loaded.
// The caller holds the load lock.
func (s *Server) loadCID(ctx context.Context, str string, depth int) (*adaptor, error) {
	s.mu.Lock()
	a, ok := s.models[str]
	s.mu.Unlock()
	if ok && a.cid == str {
		return a, nil
	}
	c, err := protocol.ParseCID(str)
	if err != nil {
		return nil, fmt.Errorf("%w: %q is not a loaded model or an adaptor CID", ErrUnknownModel, str)
	}
	if s.cfg.Fetch == nil {
		return nil, fmt.Errorf("%w: adaptor %s is not loaded (and this server loads no adaptors on demand)", ErrUnknownModel, str)
	}
	data, err := s.cfg.Fetch(ctx, c)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: adaptor %s could not be fetched: %w", ErrUnknownModel, str, err)
	}
	if got := swarm.CIDOf(data); !got.Equals(c) {
		return nil, fmt.Errorf("%w: adaptor %s: the fetched bytes are the file %s: %w", ErrUnknownModel, str, got, swarm.ErrHashMismatch)
	}
	return s.load(ctx, data, depth)
}

// evict drops the least recently used on-demand adaptors beyond
// Config.MaxOnDemand. Stages of the adaptors that remain are kept: a
// dropped parent still runs inside its children's chains. The caller holds
// s.mu.
func (s *Server) evict() {
	var dyn []*adaptor
	for k, a := range s.models {
		if a.onDemand && k == a.cid {
			dyn = append(dyn, a)
		}
	}
	if len(dyn) <= s.cfg.MaxOnDemand {
		return
	}
	sort.Slice(dyn, func(i, j int) bool { return dyn[i].used < dyn[j].used })
	for _, a := range dyn[:len(dyn)-s.cfg.MaxOnDemand] {
		delete(s.models, a.cid)
		if a.name != "" {
			delete(s.models, a.name)
		}
	}
}

// resolve returns the adaptor a request's model names, nil for the base;
// an adaptor CID that is not loaded is fetched when on-demand loading is
// on.
func (s *Server) resolve(ctx context.Context, name string) (*adaptor, error) {
	if name == BaseModel {
		return nil, nil
	}
	s.mu.Lock()
	a, ok := s.models[name]
	if ok {
		s.clock++
		a.used = s.clock
	}
	s.mu.Unlock()
	if ok {
		return a, nil
	}
	if err := s.lockLoad(ctx); err != nil {
		return nil, err
	}
	defer s.unlockLoad()
	return s.loadCID(ctx, name, 0)
}

// Models lists "base" and the loaded adaptors, the permanent ones first, in
// the order they were added.
func (s *Server) Models() []ModelCard {
	s.mu.Lock()
	var as []*adaptor
	for k, a := range s.models {
		if k == a.cid {
			as = append(as, a)
		}
	}
	s.mu.Unlock()
	sort.Slice(as, func(i, j int) bool {
		if as[i].onDemand != as[j].onDemand {
			return !as[i].onDemand
		}
		return as[i].seq < as[j].seq
	})
	out := []ModelCard{{ID: BaseModel, Object: "model", Created: s.started.Unix(), OwnedBy: "carryon", BaseHash: s.base.WeightsHash}}
	for _, a := range as {
		out = append(out, a.card())
	}
	return out
}
