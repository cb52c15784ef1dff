package coordinator

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// RegisterMetrics registers the coordinator's collector on reg (never the
// global registry unless the caller passes it). The collector reads the
// dashboard's Snapshot at scrape time, so the numbers are those the page
// shows. Metric names follow Prometheus conventions: base units (seconds,
// bytes), _total for counters, _ratio for fractions.
//
// Job counters reset when a new Collect starts (a new job), which
// Prometheus's rate() treats as a counter reset.
func RegisterMetrics(reg prometheus.Registerer, d *Dashboard) error {
	return reg.Register(&coordCollector{d: d})
}

type coordCollector struct{ d *Dashboard }

var (
	mChunks = prometheus.NewDesc("carryon_coordinator_chunks",
		"Chunks of the current job by state: done (in the cache), leased (leases in flight), pending (waiting for a first lease), verifying (awaiting another opinion), left (not done).",
		[]string{"state"}, nil)
	mChunksTotal = prometheus.NewDesc("carryon_coordinator_job_chunks",
		"Distinct chunks in the current job's data set.", nil, nil)
	mCacheHits = prometheus.NewDesc("carryon_coordinator_cache_hit_chunks",
		"Chunks already in the cache when the current job began (not leased again).", nil, nil)
	mJobFinished = prometheus.NewDesc("carryon_coordinator_job_finished",
		"1 once every chunk of the current job is in the cache.", nil, nil)
	mBytes = prometheus.NewDesc("carryon_coordinator_bytes_received_total",
		"Bridged embedding payload bytes received from nodes in the current job.", nil, nil)
	mComputed = prometheus.NewDesc("carryon_coordinator_computed_tokens_total",
		"Tokens of every result received in the current job (verification and duplicates included).", nil, nil)
	mDoneTokens = prometheus.NewDesc("carryon_coordinator_done_tokens",
		"Tokens of the chunks stored in the current job (falls when a banned node's chunks are dropped).", nil, nil)
	mLeases = prometheus.NewDesc("carryon_coordinator_leases_total",
		"Extra leases of the current job by kind: speculative (duplicates for the tail), reassigned (redone after a failure).",
		[]string{"kind"}, nil)
	mVerify = prometheus.NewDesc("carryon_coordinator_verifications_total",
		"Verification of volunteers' work in the current job: sampled, verified, disagreements, bans, dropped (chunks of banned nodes removed).",
		[]string{"event"}, nil)
	mExtra = prometheus.NewDesc("carryon_coordinator_extra_compute_ratio",
		"Compute spent beyond one pass over the job's chunks, as a fraction of one pass.", nil, nil)
	mNodes = prometheus.NewDesc("carryon_coordinator_nodes",
		"Nodes known to the coordinator by state: eligible, banned, other (seen but not eligible now).",
		[]string{"state"}, nil)
	mPeers = prometheus.NewDesc("carryon_coordinator_connected_peers",
		"Peers the coordinator's host is connected to.", nil, nil)
	mNodeTPS = prometheus.NewDesc("carryon_coordinator_node_tokens_per_second",
		"A node's throughput as measured from its completed leases.", []string{"peer", "device"}, nil)
	mNodeLeases = prometheus.NewDesc("carryon_coordinator_node_leases",
		"A node's leases in flight.", []string{"peer"}, nil)
	mNodeChunks = prometheus.NewDesc("carryon_coordinator_node_chunks",
		"Chunks of the current job stored from a node's results.", []string{"peer"}, nil)
	mNodeFailures = prometheus.NewDesc("carryon_coordinator_node_failures_total",
		"Leases that failed on a node (error, deadline, disconnect) in the current job.", []string{"peer"}, nil)
	mNodeBanned = prometheus.NewDesc("carryon_coordinator_node_banned",
		"1 if the node is banned from the current job for wrong results.", []string{"peer"}, nil)
	mTrainStep = prometheus.NewDesc("carryon_coordinator_train_step",
		"Latest optimiser step of the training run.", nil, nil)
	mTrainSteps = prometheus.NewDesc("carryon_coordinator_train_steps",
		"Optimiser steps the training run will take.", nil, nil)
	mTrainLoss = prometheus.NewDesc("carryon_coordinator_train_loss",
		"Mean cross-entropy per trained token (nats) of the latest step's batch.", nil, nil)
	mTrainLR = prometheus.NewDesc("carryon_coordinator_train_learning_rate",
		"Learning rate of the latest step.", nil, nil)
	mTrainGrad = prometheus.NewDesc("carryon_coordinator_train_grad_norm",
		"Global gradient L2 norm of the latest step, before clipping.", nil, nil)
	mTrainTPS = prometheus.NewDesc("carryon_coordinator_train_tokens_per_second",
		"Trained positions per second in the latest step.", nil, nil)
	mValLoss = prometheus.NewDesc("carryon_coordinator_validation_loss",
		"Mean answer-token cross-entropy (nats) on the validation split at the latest validation pass: model=carryon with the carry-on, model=base with the base alone.",
		[]string{"model"}, nil)
	mVersions = prometheus.NewDesc("carryon_coordinator_adaptor_versions",
		"Adaptor versions published from this coordinator's cache directory.", nil, nil)
	mLatest = prometheus.NewDesc("carryon_coordinator_adaptor_latest_info",
		"The newest published adaptor version (value 1), labelled with its CID, parent and step.",
		[]string{"cid", "parent", "step"}, nil)
)

func (c *coordCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mChunks, mChunksTotal, mCacheHits, mJobFinished, mBytes, mComputed, mDoneTokens,
		mLeases, mVerify, mExtra, mNodes, mPeers, mNodeTPS, mNodeLeases, mNodeChunks, mNodeFailures, mNodeBanned,
		mTrainStep, mTrainSteps, mTrainLoss, mTrainLR, mTrainGrad, mTrainTPS, mValLoss, mVersions, mLatest} {
		ch <- d
	}
}

func (c *coordCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.d.Snapshot()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	j := s.Job
	gauge(mChunks, float64(j.Done), "done")
	gauge(mChunks, float64(j.Leased), "leased")
	gauge(mChunks, float64(j.Pending), "pending")
	gauge(mChunks, float64(j.Verifying), "verifying")
	gauge(mChunks, float64(j.Left), "left")
	gauge(mChunksTotal, float64(j.Total))
	gauge(mCacheHits, float64(j.CacheHits))
	gauge(mJobFinished, b2f(j.Finished))
	counter(mBytes, float64(j.BytesReceived))
	counter(mComputed, float64(j.ComputedTokens))
	gauge(mDoneTokens, float64(j.Tokens))
	counter(mLeases, float64(j.Speculative), "speculative")
	counter(mLeases, float64(j.Reassigned), "reassigned")
	v := j.Verify
	counter(mVerify, float64(v.Sampled), "sampled")
	counter(mVerify, float64(v.Verified), "verified")
	counter(mVerify, float64(v.Disagreements), "disagreements")
	counter(mVerify, float64(v.Bans), "bans")
	counter(mVerify, float64(v.Dropped), "dropped")
	gauge(mExtra, j.ExtraComputeFraction)
	gauge(mPeers, float64(s.Coordinator.ConnectedPeers))
	var eligible, banned, other int
	for _, n := range s.Nodes {
		switch {
		case n.Banned:
			banned++
		case n.Eligible:
			eligible++
		default:
			other++
		}
		if !n.InJob {
			continue
		}
		gauge(mNodeTPS, n.TokensPerSec, n.Peer, n.Device)
		gauge(mNodeLeases, float64(n.Leases), n.Peer)
		gauge(mNodeChunks, float64(n.Chunks), n.Peer)
		counter(mNodeFailures, float64(n.Failures), n.Peer)
		gauge(mNodeBanned, b2f(n.Banned), n.Peer)
	}
	gauge(mNodes, float64(eligible), "eligible")
	gauge(mNodes, float64(banned), "banned")
	gauge(mNodes, float64(other), "other")
	t := s.Training
	gauge(mTrainStep, float64(t.Step))
	gauge(mTrainSteps, float64(t.TotalSteps))
	if t.Loss != nil {
		gauge(mTrainLoss, *t.Loss)
		gauge(mTrainLR, t.LR)
		gauge(mTrainGrad, t.GradNorm)
		gauge(mTrainTPS, t.TokensPerSec)
	}
	if t.ValLoss != nil {
		gauge(mValLoss, *t.ValLoss, "carryon")
		gauge(mValLoss, *t.ValBaseLoss, "base")
	}
	gauge(mVersions, float64(len(s.Versions)))
	if n := len(s.Versions); n > 0 {
		l := s.Versions[n-1]
		gauge(mLatest, 1, l.CID, l.Parent, strconv.Itoa(l.Step))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
