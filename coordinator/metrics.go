package coordinator

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"carryon/internal/metrics"
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
	return coordMetrics.Register(reg, d.collectMetrics)
}

var (
	coordMetrics = metrics.NewSet("carryon_coordinator_")

	mChunks = coordMetrics.Desc("chunks",
		"Chunks of the current job by state: done (in the cache), leased (leases in flight), pending (waiting for a first lease), verifying (awaiting another opinion), left (not done).", "state")
	mChunksTotal = coordMetrics.Desc("job_chunks",
		"Distinct chunks in the current job's data set.")
	mCacheHits = coordMetrics.Desc("cache_hit_chunks",
		"Chunks already in the cache when the current job began (not leased again).")
	mJobFinished = coordMetrics.Desc("job_finished",
		"1 once every chunk of the current job is in the cache.")
	mBytes = coordMetrics.Desc("bytes_received_total",
		"Bridged embedding payload bytes received from nodes in the current job.")
	mComputed = coordMetrics.Desc("computed_tokens_total",
		"Tokens of every result received in the current job (verification and duplicates included).")
	mDoneTokens = coordMetrics.Desc("done_tokens",
		"Tokens of the chunks stored in the current job (falls when a banned node's chunks are dropped).")
	mLeases = coordMetrics.Desc("leases_total",
		"Extra leases of the current job by kind: speculative (duplicates for the tail), reassigned (redone after a failure).", "kind")
	mVerify = coordMetrics.Desc("verifications_total",
		"Verification of volunteers' work in the current job: sampled, verified, disagreements, bans, dropped (chunks of banned nodes removed).", "event")
	mExtra = coordMetrics.Desc("extra_compute_ratio",
		"Compute spent beyond one pass over the job's chunks, as a fraction of one pass.")
	mNodes = coordMetrics.Desc("nodes",
		"Nodes known to the coordinator by state: eligible, banned, other (seen but not eligible now).", "state")
	mPeers = coordMetrics.Desc("connected_peers",
		"Peers the coordinator's host is connected to.")
	mNodeTPS = coordMetrics.Desc("node_tokens_per_second",
		"A node's throughput as measured from its completed leases.", "peer", "device")
	mNodeLeases = coordMetrics.Desc("node_leases",
		"A node's leases in flight.", "peer")
	mNodeChunks = coordMetrics.Desc("node_chunks",
		"Chunks of the current job stored from a node's results.", "peer")
	mNodeFailures = coordMetrics.Desc("node_failures_total",
		"Leases that failed on a node (error, deadline, disconnect) in the current job.", "peer")
	mNodeBanned = coordMetrics.Desc("node_banned",
		"1 if the node is banned from the current job for wrong results.", "peer")
	mTrainStep = coordMetrics.Desc("train_step",
		"Latest optimiser step of the training run.")
	mTrainSteps = coordMetrics.Desc("train_steps",
		"Optimiser steps the training run will take.")
	mTrainLoss = coordMetrics.Desc("train_loss",
		"Mean cross-entropy per trained token (nats) of the latest step's batch.")
	mTrainLR = coordMetrics.Desc("train_learning_rate",
		"Learning rate of the latest step.")
	mTrainGrad = coordMetrics.Desc("train_grad_norm",
		"Global gradient L2 norm of the latest step, before clipping.")
	mTrainTPS = coordMetrics.Desc("train_tokens_per_second",
		"Trained positions per second in the latest step.")
	mValLoss = coordMetrics.Desc("validation_loss",
		"Mean answer-token cross-entropy (nats) on the validation split at the latest validation pass: model=carryon with the carry-on, model=base with the base alone.", "model")
	mVersions = coordMetrics.Desc("adaptor_versions",
		"Adaptor versions published from this coordinator's cache directory.")
	mLatest = coordMetrics.Desc("adaptor_latest_info",
		"The newest published adaptor version (value 1), labelled with its CID, parent and step.", "cid", "parent", "step")
)

func (d *Dashboard) collectMetrics(e metrics.Emit) {
	s := d.Snapshot()
	j := s.Job
	e.Gauge(mChunks, float64(j.Done), "done")
	e.Gauge(mChunks, float64(j.Leased), "leased")
	e.Gauge(mChunks, float64(j.Pending), "pending")
	e.Gauge(mChunks, float64(j.Verifying), "verifying")
	e.Gauge(mChunks, float64(j.Left), "left")
	e.Gauge(mChunksTotal, float64(j.Total))
	e.Gauge(mCacheHits, float64(j.CacheHits))
	e.Gauge(mJobFinished, b2f(j.Finished))
	e.Counter(mBytes, float64(j.BytesReceived))
	e.Counter(mComputed, float64(j.ComputedTokens))
	e.Gauge(mDoneTokens, float64(j.Tokens))
	e.Counter(mLeases, float64(j.Speculative), "speculative")
	e.Counter(mLeases, float64(j.Reassigned), "reassigned")
	v := j.Verify
	e.Counter(mVerify, float64(v.Sampled), "sampled")
	e.Counter(mVerify, float64(v.Verified), "verified")
	e.Counter(mVerify, float64(v.Disagreements), "disagreements")
	e.Counter(mVerify, float64(v.Bans), "bans")
	e.Counter(mVerify, float64(v.Dropped), "dropped")
	e.Gauge(mExtra, j.ExtraComputeFraction)
	e.Gauge(mPeers, float64(s.Coordinator.ConnectedPeers))
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
		e.Gauge(mNodeTPS, n.TokensPerSec, n.Peer, n.Device)
		e.Gauge(mNodeLeases, float64(n.Leases), n.Peer)
		e.Gauge(mNodeChunks, float64(n.Chunks), n.Peer)
		e.Counter(mNodeFailures, float64(n.Failures), n.Peer)
		e.Gauge(mNodeBanned, b2f(n.Banned), n.Peer)
	}
	e.Gauge(mNodes, float64(eligible), "eligible")
	e.Gauge(mNodes, float64(banned), "banned")
	e.Gauge(mNodes, float64(other), "other")
	t := s.Training
	e.Gauge(mTrainStep, float64(t.Step))
	e.Gauge(mTrainSteps, float64(t.TotalSteps))
	if t.Loss != nil {
		e.Gauge(mTrainLoss, *t.Loss)
		e.Gauge(mTrainLR, t.LR)
		e.Gauge(mTrainGrad, t.GradNorm)
		e.Gauge(mTrainTPS, t.TokensPerSec)
	}
	if t.ValLoss != nil {
		e.Gauge(mValLoss, *t.ValLoss, "carryon")
		e.Gauge(mValLoss, *t.ValBaseLoss, "base")
	}
	e.Gauge(mVersions, float64(len(s.Versions)))
	if n := len(s.Versions); n > 0 {
		l := s.Versions[n-1]
		e.Gauge(mLatest, 1, l.CID, l.Parent, strconv.Itoa(l.Step))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
