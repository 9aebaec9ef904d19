package e2e

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

// bearer sends token with every call, streams included.
func bearer(token string) connect.ClientOption { return connect.WithInterceptors(streamBearer(token)) }

type streamBearer string

func (b streamBearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, req)
	}
}
func (b streamBearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		return conn
	}
}
func (b streamBearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// TestWatchResumeAndSSE: a watcher that disconnects and resumes from its
// last sequence number gets every later event exactly once, in order; an
// SSE client reads the first event while the execution still runs.
func TestWatchResumeAndSSE(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)})
	s.StartAgent(t, "talker", "role=talker")
	s.WaitAgents(t, 1)
	j := createJob(t, s, map[string]any{"name": "chatty", "targets": []map[string]any{{"selector": "role=talker"}},
		"actions": []map[string]any{{"command": "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.4; done"}}})
	e := execute(t, s, j.ID)

	// SSE: the first event arrives while the execution is still running.
	req, _ := http.NewRequest("GET", s.URL+"/api/v1/executions/"+e.ID+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+s.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("SSE: HTTP %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	rd := bufio.NewReader(resp.Body)
	first, err := rd.ReadString('\n')
	if err != nil || !strings.HasPrefix(first, "id: 1") {
		t.Fatalf("first SSE line %q, %v", first, err)
	}
	var now struct {
		Execution execution `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/executions/"+e.ID, nil, &now))
	if now.Execution.Status == "succeeded" || now.Execution.Status == "failed" {
		t.Fatalf("the first SSE event arrived only after the execution ended (%s)", now.Execution.Status)
	}

	// Connect: read three events, drop the stream, resume after the last.
	client := opsconductorv1connect.NewExecutionServiceClient(http.DefaultClient, s.URL, bearer(s.Token))
	var seqs []int64
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := client.WatchExecution(ctx, connect.NewRequest(&opsconductorv1.WatchExecutionRequest{Id: e.ID}))
	if err != nil {
		t.Fatal(err)
	}
	for len(seqs) < 3 && stream.Receive() {
		seqs = append(seqs, stream.Msg().GetEvent().GetSequence())
	}
	cancel()
	stream.Close()
	stream, err = client.WatchExecution(context.Background(), connect.NewRequest(&opsconductorv1.WatchExecutionRequest{Id: e.ID, AfterSequence: seqs[len(seqs)-1]}))
	if err != nil {
		t.Fatal(err)
	}
	var lastType string
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		seqs = append(seqs, ev.GetSequence())
		lastType = ev.GetType() + ":" + ev.GetStatus()
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	for i, seq := range seqs {
		if seq != int64(i+1) {
			t.Fatalf("sequences %v: want 1..n exactly once, in order", seqs)
		}
	}
	if lastType != "execution.status:succeeded" {
		t.Fatalf("the stream ended on %s", lastType)
	}
	// The SSE stream saw the same events and ended too.
	n := 1
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			break
		}
		if id, ok := strings.CutPrefix(strings.TrimSpace(line), "id: "); ok {
			n++
			if got, _ := strconv.Atoi(id); got != n {
				t.Fatalf("SSE event %d has id %s", n, id)
			}
		}
	}
	if n != len(seqs) {
		t.Fatalf("SSE saw %d events, the watcher %d", n, len(seqs))
	}
	// Resuming over SSE after the end yields nothing more, at once.
	req, _ = http.NewRequest("GET", s.URL+"/api/v1/executions/"+e.ID+"/events?after="+strconv.Itoa(n), nil)
	req.Header.Set("Authorization", "Bearer "+s.Token)
	start := time.Now()
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if time.Since(start) > 10*time.Second {
		t.Fatal("resuming after the last event did not end promptly")
	}
	unauth, _ := http.Get(s.URL + "/api/v1/executions/" + e.ID + "/events")
	if unauth.StatusCode != http.StatusUnauthorized {
		t.Fatalf("SSE without a token: HTTP %d", unauth.StatusCode)
	}
	unauth.Body.Close()
}
