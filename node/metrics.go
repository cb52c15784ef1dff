package node

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"carryon/internal/metrics"
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
	return nodeMetrics.Register(reg, n.collectMetrics)
}

var (
	nodeMetrics = metrics.NewSet("carryon_node_")

	mJobs = nodeMetrics.Desc("jobs_total",
		"Embedding jobs completed and acknowledged by the coordinator.")
	mRejected = nodeMetrics.Desc("chunks_rejected_total",
		"Embedding requests refused (bad input, wrong base, overload) or whose result was not acknowledged.")
	mTokens = nodeMetrics.Desc("tokens_total",
		"Tokens run through a base in acknowledged jobs.")
	mBytes = nodeMetrics.Desc("bytes_sent_total",
		"Bridged embedding payload bytes sent in acknowledged jobs.")
	mTPS = nodeMetrics.Desc("tokens_per_second",
		"Measured forward-pass throughput (moving average over jobs), the figure the node advertises.")
	mBusy = nodeMetrics.Desc("busy_ratio",
		"Fraction of the node's job slots in use at scrape time.")
	mSlots = nodeMetrics.Desc("job_slots",
		"Embedding jobs the node runs at once at most.")
	mQueued = nodeMetrics.Desc("queued_jobs",
		"Embedding jobs waiting for a slot at scrape time.")
	mInfo = nodeMetrics.Desc("info",
		"Always 1; labelled with the node's compute device.", "device")
	mBase = nodeMetrics.Desc("base_info",
		"Always 1 for each base the node serves.", "name", "weights_hash")
)

func (n *Node) collectMetrics(e metrics.Emit) {
	st := n.Stats()
	e.Counter(mJobs, float64(st.Jobs))
	e.Counter(mRejected, float64(st.Rejected))
	e.Counter(mTokens, float64(st.Tokens))
	e.Counter(mBytes, float64(st.BytesSent))
	e.Gauge(mTPS, st.TokensPerSec)
	e.Gauge(mBusy, float64(len(n.slots))/float64(cap(n.slots)))
	e.Gauge(mSlots, float64(cap(n.slots)))
	e.Gauge(mQueued, float64(max(0, n.waiting.Load())))
	e.Gauge(mInfo, 1, n.cfg.Device)
	hashes := make([]string, 0, len(n.bases))
	for h := range n.bases {
		hashes = append(hashes, h)
	}
	sort.Strings(hashes)
	for _, h := range hashes {
		e.Gauge(mBase, 1, n.bases[h].Info().Name, h)
	}
}
