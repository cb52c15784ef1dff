package carryon

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"

	"carryon/tensor"
)

// Adaptor file: a safetensors file (tensor.WriteSafetensors, so equal
// carry-ons and metadata give equal bytes, and the bytes' hash is the
// adaptor's CID) with one F32 tensor per parameter, named as in
// Model.Tensors, and these __metadata__ keys:
//
//	format     "carryon-adaptor"
//	version    "1"
//	config     the Config as JSON
//	alpha      Config.Alpha, decimal (for people and tools; must agree)
//	bits       the bridge setting the carry-on was trained on
//	base_hash  hash of the base's weights
//	parent     CID of the previous boosting stage, "" for none
//	step       optimiser steps taken, decimal
//	data_hash  hash of the training data
//	metrics    JSON object of name → number (eval loss, ...)
//
// v1: first version.
const (
	AdaptorFormat  = "carryon-adaptor"
	AdaptorVersion = "1"
)

// Caps on the metadata of an adaptor.
const (
	coMaxMetaString = 1024
	coMaxMetrics    = 256
)

// Meta is the provenance stored with an adaptor.
type Meta struct {
	BaseHash string             // hash naming the base's weights
	Parent   string             // CID of the parent adaptor (boosting), "" for a first stage
	Bridge   string             // bridge setting of the training embeddings, e.g. "q8" or "q4g64" (tensor.Codec names)
	DataHash string             // hash of the training data
	Step     int                // optimiser steps taken
	Metrics  map[string]float64 // e.g. "val_loss"; finite values
}

func (m Meta) validate() error {
	for _, f := range []struct{ name, v string }{
		{"BaseHash", m.BaseHash}, {"Parent", m.Parent}, {"Bridge", m.Bridge}, {"DataHash", m.DataHash},
	} {
		if len(f.v) > coMaxMetaString {
			return fmt.Errorf("%s has %d bytes, over the cap of %d", f.name, len(f.v), coMaxMetaString)
		}
	}
	if m.Step < 0 {
		return fmt.Errorf("Step = %d, want >= 0", m.Step)
	}
	if len(m.Metrics) > coMaxMetrics {
		return fmt.Errorf("%d metrics, over the cap of %d", len(m.Metrics), coMaxMetrics)
	}
	for k, v := range m.Metrics {
		if len(k) == 0 || len(k) > coMaxNameLen {
			return fmt.Errorf("metric name of %d bytes, want 1..%d", len(k), coMaxNameLen)
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("metric %q = %v, want a finite value", k, v)
		}
	}
	return nil
}

// coCheckFinite returns an error naming the first tensor holding a NaN or
// an infinity.
func (c *Model) coCheckFinite() error {
	for _, t := range c.tensors {
		for i, v := range c.Params[t.Offset : t.Offset+t.Numel()] {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("tensor %q[%d] = %v", t.Name, i, v)
			}
		}
	}
	return nil
}

// Marshal encodes the carry-on and meta as an adaptor file. Equal
// inputs give equal bytes.
func (c *Model) Marshal(meta Meta) ([]byte, error) {
	if err := meta.validate(); err != nil {
		return nil, fmt.Errorf("model.Marshal: %w", err)
	}
	if err := c.coCheckFinite(); err != nil {
		return nil, fmt.Errorf("model.Marshal: %w", err)
	}
	cfg, err := json.Marshal(c.Config)
	if err != nil {
		return nil, fmt.Errorf("model.Marshal: config: %w", err)
	}
	metrics := []byte("{}")
	if len(meta.Metrics) > 0 {
		if metrics, err = json.Marshal(meta.Metrics); err != nil { // keys sorted
			return nil, fmt.Errorf("model.Marshal: metrics: %w", err)
		}
	}
	md := map[string]string{
		"format":    AdaptorFormat,
		"version":   AdaptorVersion,
		"config":    string(cfg),
		"alpha":     strconv.FormatFloat(float64(c.Config.Alpha), 'g', -1, 32),
		"bits":      meta.Bridge,
		"base_hash": meta.BaseHash,
		"parent":    meta.Parent,
		"step":      strconv.Itoa(meta.Step),
		"data_hash": meta.DataHash,
		"metrics":   string(metrics),
	}
	views := make([]tensor.View, len(c.tensors))
	for i, t := range c.tensors {
		views[i] = tensor.F32View(t.Name, c.Params[t.Offset:t.Offset+t.Numel()], t.Shape...)
	}
	data, err := tensor.MarshalSafetensors(views, md)
	if err != nil {
		return nil, fmt.Errorf("model.Marshal: %w", err)
	}
	return data, nil
}

// Unmarshal decodes an adaptor file. It rejects another format or
// version, an invalid config, a missing, extra or misshapen tensor (naming
// it), non-finite weights and malformed metadata. The config is validated
// and every tensor's bytes checked against it before Params is allocated,
// so memory use is bounded by len(data). The result does not alias data.
func Unmarshal(data []byte) (*Model, Meta, error) {
	var meta Meta
	fail := func(format string, args ...any) (*Model, Meta, error) {
		return nil, Meta{}, fmt.Errorf("model.Unmarshal: "+format, args...)
	}
	st, err := tensor.ParseSafetensorsOf(data, AdaptorFormat, AdaptorVersion)
	if err != nil {
		return fail("%w", err)
	}
	md := st.Meta
	var cfg Config
	if err := json.Unmarshal([]byte(md["config"]), &cfg); err != nil {
		return fail("config: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		return fail("config: %w", err)
	}
	alpha, err := strconv.ParseFloat(md["alpha"], 32)
	if err != nil || float32(alpha) != cfg.Alpha {
		return fail("alpha %q does not match the config's %v", md["alpha"], cfg.Alpha)
	}
	layout := cfg.layout()
	want := make(map[string]bool, len(layout))
	for _, t := range layout {
		want[t.Name] = true
		v, ok := st.Get(t.Name)
		if !ok {
			return fail("tensor %q is missing", t.Name)
		}
		if v.DType != tensor.F32 || !slices.Equal(v.Shape, t.Shape) {
			return fail("tensor %q is %s %v, want F32 %v", t.Name, v.DType, v.Shape, t.Shape)
		}
	}
	for _, name := range st.Names() {
		if !want[name] {
			return fail("unexpected tensor %q", name)
		}
	}
	// Tensors may overlap in a hostile file: bound the allocation by the
	// input itself.
	if n := cfg.numParams64(); 4*n > int64(len(data)) {
		return fail("config needs %d parameters, the file holds %d bytes", n, len(data))
	}
	meta.Bridge, meta.BaseHash, meta.Parent, meta.DataHash = md["bits"], md["base_hash"], md["parent"], md["data_hash"]
	if meta.Step, err = strconv.Atoi(md["step"]); err != nil {
		return fail("step %q: %v", md["step"], err)
	}
	if err := json.Unmarshal([]byte(md["metrics"]), &meta.Metrics); err != nil {
		return fail("metrics: %v", err)
	}
	if len(meta.Metrics) == 0 {
		meta.Metrics = nil
	}
	if err := meta.validate(); err != nil {
		return fail("%w", err)
	}
	c, err := coAlloc(cfg)
	if err != nil {
		return fail("%w", err)
	}
	for _, t := range c.tensors {
		v, _ := st.Get(t.Name)
		f, err := v.Float32()
		if err != nil {
			return fail("%w", err)
		}
		copy(c.Params[t.Offset:t.Offset+t.Numel()], f)
	}
	if err := c.coCheckFinite(); err != nil {
		return fail("%w", err)
	}
	return c, meta, nil
}
