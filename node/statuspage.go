package node

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"strings"
	"time"
)

// ControlHeader must be set (to "1") on POST /pause and /resume: a web page
// from another origin cannot set it without the node's consent (the
// browser asks first with an OPTIONS request, which the page refuses), so
// a site the volunteer visits cannot pause their node.
const ControlHeader = "Carryon-Control"

// StatusHandler serves the node's local status page, meant for 127.0.0.1
// only (it has no authentication):
//
//	GET  /         the status for a browser, with pause/resume buttons
//	GET  /status   Status as JSON
//	POST /pause    Pause("paused by the user"), then Status (needs ControlHeader)
//	POST /resume   Resume, then Status (needs ControlHeader)
func StatusHandler(n *Node) http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter) {
		b, _ := json.MarshalIndent(n.Status(), "", "  ")
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(append(b, '\n'))
	}
	control := func(do func()) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get(ControlHeader) != "1" {
				http.Error(w, "pause and resume need the header "+ControlHeader+": 1 (carryon node pause|resume sets it)", http.StatusForbidden)
				return
			}
			do()
			reply(w)
		}
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		var text strings.Builder
		WriteStatusText(&text, n.Status())
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		pageTmpl.Execute(w, text.String())
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { reply(w) })
	mux.HandleFunc("POST /pause", control(func() { n.Pause("paused by the user") }))
	mux.HandleFunc("POST /resume", control(n.Resume))
	return mux
}

// pageTmpl is the browser view: the text form, refreshed every 10 s.
var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>carryon node</title>
<meta http-equiv="refresh" content="10">
<style>body{font-family:sans-serif;margin:2em}pre{font-size:1.05em}</style></head>
<body><h1>carryon node</h1>
<pre>{{.}}</pre>
<button onclick="act('pause')">Pause</button> <button onclick="act('resume')">Resume</button>
<p>Running chunks finish when you pause; queued ones go back to the coordinator. Command line:
<code>carryon node status|pause|resume</code>. JSON: <a href="/status">/status</a>.</p>
<script>
function act(v){fetch('/'+v,{method:'POST',headers:{'` + ControlHeader + `':'1'}}).then(()=>location.reload())}
</script></body></html>
`))

// Control asks the node whose status page is at addr (host:port) for its
// status (verb "status") or to pause or resume, and returns its status.
func Control(ctx context.Context, addr, verb string) (Status, error) {
	method := http.MethodPost
	switch verb {
	case "status":
		method = http.MethodGet
	case "pause", "resume":
	default:
		return Status{}, fmt.Errorf("node %s: want status, pause or resume", verb)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+"/"+verb, nil)
	if err != nil {
		return Status{}, fmt.Errorf("node %s: %w", verb, err)
	}
	req.Header.Set(ControlHeader, "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Status{}, fmt.Errorf("node %s: no node answers at %s (is it running, with --status-addr %s?): %w", verb, addr, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Status{}, fmt.Errorf("node %s: read the reply from %s: %w", verb, addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Status{}, fmt.Errorf("node %s: %s: %s", verb, resp.Status, strings.TrimSpace(string(body)))
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		return Status{}, fmt.Errorf("node %s: the reply from %s is not a node status: %w", verb, addr, err)
	}
	return st, nil
}

// WriteStatusText prints s for a volunteer.
func WriteStatusText(w io.Writer, s Status) error {
	state := s.State
	if s.PausedReason != "" {
		state += " (" + s.PausedReason + ")"
		if s.PausedSince != nil {
			state += fmt.Sprintf(" for %v", time.Since(*s.PausedSince).Round(time.Second))
		}
	}
	_, err := fmt.Fprintf(w, "node %s: %s, up %v\nserving: %s\ncontributed: %d chunks, %d tokens, %v of compute (%.1f tokens/s); %d handed back, %d refused\n",
		s.Peer, state, time.Since(s.Started).Round(time.Second), strings.Join(s.Bases, ", "), s.Chunks, s.Tokens,
		time.Duration(s.ComputeSecs*float64(time.Second)).Round(time.Second), s.TokensPerSec, s.HandedBack, s.Rejected)
	if err != nil {
		return err
	}
	if s.TooLarge > 0 {
		if _, err := fmt.Fprintf(w, "%d chunks handed back as over the memory limit: raise --max-memory to take them\n", s.TooLarge); err != nil {
			return err
		}
	}
	if s.Limits != "" {
		if _, err := fmt.Fprintf(w, "limits: %s\n", s.Limits); err != nil {
			return err
		}
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
