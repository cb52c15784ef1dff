package node

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"
)

// RegisterMetrics registers n's collector on reg (a caller's registry,
// never the global one unless passed). The collector reads the node's
// counters at scrape time:
//
//	carryon_node_jobs_total              counter  embedding jobs completed and acknowledged
//	carryon_node_chunks_rejected_total   counter  requests refused or not acknowledged
//	carryon_node_tokens_total            counter  tokens run through a base
//	carryon_node_bytes_sent_total        counter  bridged payload bytes sent
//	carryon_node_tokens_per_second       gauge    measured forward throughput (moving average)
//	carryon_node_busy_ratio              gauge    job slots in use now, over all slots
//	carryon_node_job_slots               gauge    jobs run at once at most (MaxJobs)
//	carryon_node_queued_jobs             gauge    jobs waiting for a slot now
//	carryon_node_info                    gauge    1, labelled with the device
//	carryon_node_base_info               gauge    1 per served base, labelled name and weights_hash
//
// A process running several nodes registers each on its own registry (or
// wraps reg with prometheus.WrapRegistererWith to add a distinguishing
// label).
func RegisterMetrics(reg prometheus.Registerer, n *Node) error {
	return reg.Register(&collector{n: n})
}

type collector struct{ n *Node }

var (
	mJobs = prometheus.NewDesc("carryon_node_jobs_total",
		"Embedding jobs completed and acknowledged by the coordinator.", nil, nil)
	mRejected = prometheus.NewDesc("carryon_node_chunks_rejected_total",
		"Embedding requests refused (bad input, wrong base, overload) or whose result was not acknowledged.", nil, nil)
	mTokens = prometheus.NewDesc("carryon_node_tokens_total",
		"Tokens run through a base in acknowledged jobs.", nil, nil)
	mBytes = prometheus.NewDesc("carryon_node_bytes_sent_total",
		"Bridged embedding payload bytes sent in acknowledged jobs.", nil, nil)
	mTPS = prometheus.NewDesc("carryon_node_tokens_per_second",
		"Measured forward-pass throughput (moving average over jobs), the figure the node advertises.", nil, nil)
	mBusy = prometheus.NewDesc("carryon_node_busy_ratio",
		"Fraction of the node's job slots in use at scrape time.", nil, nil)
	mSlots = prometheus.NewDesc("carryon_node_job_slots",
		"Embedding jobs the node runs at once at most.", nil, nil)
	mQueued = prometheus.NewDesc("carryon_node_queued_jobs",
		"Embedding jobs waiting for a slot at scrape time.", nil, nil)
	mInfo = prometheus.NewDesc("carryon_node_info",
		"Always 1; labelled with the node's compute device.", []string{"device"}, nil)
	mBase = prometheus.NewDesc("carryon_node_base_info",
		"Always 1 for each base the node serves.", []string{"name", "weights_hash"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mJobs, mRejected, mTokens, mBytes, mTPS, mBusy, mSlots, mQueued, mInfo, mBase} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	st := n.Stats()
	emit := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, labels...)
	}
	emit(mJobs, prometheus.CounterValue, float64(st.Jobs))
	emit(mRejected, prometheus.CounterValue, float64(st.Rejected))
	emit(mTokens, prometheus.CounterValue, float64(st.Tokens))
	emit(mBytes, prometheus.CounterValue, float64(st.BytesSent))
	emit(mTPS, prometheus.GaugeValue, st.TokensPerSec)
	emit(mBusy, prometheus.GaugeValue, float64(len(n.slots))/float64(cap(n.slots)))
	emit(mSlots, prometheus.GaugeValue, float64(cap(n.slots)))
	emit(mQueued, prometheus.GaugeValue, float64(max(0, n.waiting.Load())))
	emit(mInfo, prometheus.GaugeValue, 1, n.cfg.Device)
	hashes := make([]string, 0, len(n.bases))
	for h := range n.bases {
		hashes = append(hashes, h)
	}
	sort.Strings(hashes)
	for _, h := range hashes {
		emit(mBase, prometheus.GaugeValue, 1, n.bases[h].Info().Name, h)
	}
}
