package node

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// StatusHandler serves the node's local control page, meant for
// 127.0.0.1 only (it has no authentication):
//
//	GET  /status   Status as JSON
//	POST /pause    Pause("paused by the user"), then Status
//	POST /resume   Resume, then Status
func StatusHandler(n *Node) http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter) {
		b, _ := json.MarshalIndent(n.Status(), "", "  ")
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(b, '\n'))
	}
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { reply(w) })
	mux.HandleFunc("POST /pause", func(w http.ResponseWriter, r *http.Request) {
		n.Pause("paused by the user")
		reply(w)
	})
	mux.HandleFunc("POST /resume", func(w http.ResponseWriter, r *http.Request) {
		n.Resume()
		reply(w)
	})
	return mux
}

// WriteStatusText prints s for a volunteer.
func WriteStatusText(w io.Writer, s Status) error {
	state := s.State
	if s.PausedReason != "" {
		state += " (" + s.PausedReason + ")"
	}
	_, err := fmt.Fprintf(w, "node %s: %s, up %v\nserving: %v\ncontributed: %d chunks, %d tokens, %v of compute (%.1f tokens/s); %d handed back, %d refused\n",
		s.Peer, state, time.Since(s.Started).Round(time.Second), s.Bases, s.Chunks, s.Tokens,
		time.Duration(s.ComputeSecs*float64(time.Second)).Round(time.Second), s.TokensPerSec, s.HandedBack, s.Rejected)
	if err != nil {
		return err
	}
	if len(s.Current) == 0 {
		_, err = fmt.Fprintln(w, "current job: none")
		return err
	}
	for _, c := range s.Current {
		if _, err := fmt.Fprintf(w, "current job: %s chunk %s, %d sequences, %d tokens, for %v\n",
			c.Job, c.Chunk, c.Seqs, c.Tokens, time.Since(c.Started).Round(time.Second)); err != nil {
			return err
		}
	}
	return nil
}
