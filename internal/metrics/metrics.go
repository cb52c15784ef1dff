// Package metrics makes the Prometheus collectors of node and coordinator:
// a set of descriptors under one name prefix, and one function that reads
// their values at scrape time.
package metrics

import "github.com/prometheus/client_golang/prometheus"

// Set is one part's metric descriptors, all named Prefix + name.
type Set struct {
	prefix string
	descs  []*prometheus.Desc
}

// NewSet starts an empty set whose names begin with prefix (for example
// "carryon_node_").
func NewSet(prefix string) *Set { return &Set{prefix: prefix} }

// Desc adds the metric prefix+name to s, with its help text and variable
// labels, and returns its descriptor.
func (s *Set) Desc(name, help string, labels ...string) *prometheus.Desc {
	d := prometheus.NewDesc(s.prefix+name, help, labels, nil)
	s.descs = append(s.descs, d)
	return d
}

// Register registers on reg (never the global registry unless the caller
// passes it) a collector that describes every metric of s and, at each
// scrape, calls collect to send their values. Registering the same set
// twice on one registry fails.
func (s *Set) Register(reg prometheus.Registerer, collect func(Emit)) error {
	return reg.Register(collector{s, collect})
}

// Emit sends a scrape's samples.
type Emit struct{ ch chan<- prometheus.Metric }

// Gauge sends the gauge d's value v for the given label values.
func (e Emit) Gauge(d *prometheus.Desc, v float64, labels ...string) {
	e.ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

// Counter sends the counter d's value v for the given label values.
func (e Emit) Counter(d *prometheus.Desc, v float64, labels ...string) {
	e.ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

type collector struct {
	s       *Set
	collect func(Emit)
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.s.descs {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) { c.collect(Emit{ch}) }
