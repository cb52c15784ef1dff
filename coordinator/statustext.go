package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"text/tabwriter"
	"time"
)

// The text form of a coordinator's status, as `carryon status` prints it
// from a dashboard's /api/status.

// FetchStatus gets and decodes a dashboard's status (at most 16 MiB).
func FetchStatus(ctx context.Context, url string) ([]byte, *DashboardStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("is the coordinator running with --http? %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return nil, nil, fmt.Errorf("%s: %s", url, e.Error)
		}
		return nil, nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	var s DashboardStatus
	if err := json.Unmarshal(body, &s); err != nil {
		return nil, nil, fmt.Errorf("%s: not a carryon dashboard status: %w", url, err)
	}
	return body, &s, nil
}

// WriteStatusText writes the job at a glance.
func WriteStatusText(w io.Writer, s *DashboardStatus, now time.Time) {
	c, j, t := s.Coordinator, s.Job, s.Training
	fmt.Fprintf(w, "coordinator %s: %s\n", orDash(c.Peer), s.Phase)
	if s.Error != "" {
		fmt.Fprintf(w, "error: %s\n", s.Error)
	}
	fmt.Fprintf(w, "base %s (%s, dim %d), codec %s, layers %v\n", shortID(c.Base), c.BaseArch, c.BaseDim, c.Codec, c.Layers)
	if j.ID == "" {
		fmt.Fprintf(w, "job: not started\n")
	} else {
		pct := 0.0
		if j.Total > 0 {
			pct = 100 * float64(j.Done) / float64(j.Total)
		}
		fmt.Fprintf(w, "job %s: %d/%d chunks done (%.0f%%), %d leased, %d verifying, %d left; %d cache hits; %s received\n",
			j.ID, j.Done, j.Total, pct, j.Leased, j.Verifying, j.Left, j.CacheHits, humanBytes(j.BytesReceived))
		if d := j.Data; d.Format != "" {
			fmt.Fprintf(w, "data (%s): %d records read, %d used, %d cut to the sequence length, %d dropped\n",
				d.Format, d.Read, d.Used, d.Cut, d.Dropped)
			for _, why := range slices.Sorted(maps.Keys(d.Why)) {
				fmt.Fprintf(w, "  %d × %s\n", d.Why[why], why)
			}
		}
		v := j.Verify
		fmt.Fprintf(w, "verification: %d sampled, %d verified, %d disagreements, %d bans; extra compute %.1f%%\n",
			v.Sampled, v.Verified, v.Disagreements, v.Bans, 100*j.ExtraComputeFraction)
	}
	eligible, banned := 0, 0
	for _, n := range s.Nodes {
		if n.Eligible {
			eligible++
		}
		if n.Banned {
			banned++
		}
	}
	fmt.Fprintf(w, "nodes: %d (%d eligible, %d banned), %d peers connected\n", len(s.Nodes), eligible, banned, c.ConnectedPeers)
	if len(s.Nodes) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tDEVICE\tTOK/S\tLEASES\tCHUNKS\tVERIFIED\tFAILS\tTRUST\tSTATE")
		for _, n := range s.Nodes {
			state := "seen"
			switch {
			case n.Banned:
				state = "banned: " + n.BanReason
			case n.Eligible:
				state = "eligible"
			case n.InJob:
				state = "idle"
			}
			tps := n.TokensPerSec
			if tps == 0 {
				tps = n.AdvertTokensPerSec
			}
			// Trust: the run of verified results (kept across restarts) and
			// the sampling rate it earns (BOINC's adaptive replication).
			trust := fmt.Sprintf("%d clean, sampled %.0f%%", n.Clean, 100*n.SamplingRate)
			if n.Suspect {
				trust += ", suspect"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%.0f\t%d/%d\t%d\t%d\t%d\t%s\t%s\n", shortID(n.Peer), orDash(n.Device), tps,
				n.Leases, n.Cap, n.Chunks, n.Verified, n.Failures, trust, state)
		}
		tw.Flush()
	}
	switch {
	case t.Loss == nil && t.ResumedFrom > 0 && t.ResumedFrom >= t.TotalSteps:
		fmt.Fprintf(w, "training: complete: resumed from the checkpoint at step %d/%d, no step left to take",
			t.ResumedFrom, t.TotalSteps)
	case t.Loss == nil && t.ResumedFrom > 0:
		fmt.Fprintf(w, "training: resumed from the checkpoint at step %d/%d, no step taken yet", t.ResumedFrom, t.TotalSteps)
	case t.Loss == nil:
		fmt.Fprintf(w, "training: not started (%d steps planned)", t.TotalSteps)
	default:
		fmt.Fprintf(w, "training: step %d/%d, loss %.4f, lr %.3g, %.0f tokens/s", t.Step, t.TotalSteps, *t.Loss, t.LR, t.TokensPerSec)
	}
	if t.ValLoss != nil {
		fmt.Fprintf(w, "; validation %.4f (base alone %.4f)", *t.ValLoss, *t.ValBaseLoss)
	}
	fmt.Fprintln(w)
	if n := len(s.Versions); n == 0 {
		fmt.Fprintf(w, "adaptor: none published\n")
	} else {
		v := s.Versions[n-1]
		age := now.Sub(time.UnixMilli(v.UnixMilli)).Round(time.Second)
		fmt.Fprintf(w, "adaptor: %s (step %d, %s, published %s ago; %d versions", v.CID, v.Step, humanBytes(int64(v.Size)), age, n)
		if v.Parent != "" {
			fmt.Fprintf(w, ", parent %s", v.Parent)
		}
		fmt.Fprintln(w, ")")
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shortID(s string) string {
	if len(s) > 16 {
		return s[:8] + "…" + s[len(s)-6:]
	}
	return orDash(s)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
