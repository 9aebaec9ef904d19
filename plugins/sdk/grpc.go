package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pluginv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/plugin/v1"
)

// server runs on the plugin side.
type server struct {
	pluginv1.UnimplementedExecutorServer
	impl     Executor
	inflight *sync.WaitGroup // Execute calls under way
}

func (s *server) Describe(ctx context.Context, _ *pluginv1.DescribeRequest) (*pluginv1.DescribeResponse, error) {
	return s.impl.Describe(ctx)
}

func (s *server) Validate(ctx context.Context, req *pluginv1.ValidateRequest) (*pluginv1.ValidateResponse, error) {
	return &pluginv1.ValidateResponse{Violations: s.impl.Validate(ctx, req.GetAction())}, nil
}

// streamWriter sends writes as Output messages; gRPC streams need one
// sender at a time.
type streamWriter struct {
	mu     *sync.Mutex
	stream pluginv1.Executor_ExecuteServer
	name   string
}

func (w streamWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	data := append([]byte(nil), p...)
	if err := w.stream.Send(&pluginv1.ExecuteResponse{Event: &pluginv1.ExecuteResponse_Output{Output: &pluginv1.Output{Stream: w.name, Data: data}}}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *server) Execute(req *pluginv1.ExecuteRequest, stream pluginv1.Executor_ExecuteServer) error {
	s.inflight.Add(1)
	defer s.inflight.Done()
	mu := &sync.Mutex{}
	res := s.impl.Execute(stream.Context(), req.GetAction(), req.GetTarget(),
		streamWriter{mu, stream, "stdout"}, streamWriter{mu, stream, "stderr"})
	mu.Lock()
	defer mu.Unlock()
	return stream.Send(&pluginv1.ExecuteResponse{Event: &pluginv1.ExecuteResponse_Result{Result: &pluginv1.Result{
		Status: res.Status, ExitCode: int32(res.ExitCode), Error: res.Error,
	}}})
}

func (s *server) EndTask(ctx context.Context, req *pluginv1.EndTaskRequest) (*pluginv1.EndTaskResponse, error) {
	if te, ok := s.impl.(TaskEnder); ok {
		te.EndTask(ctx, req.GetTaskId())
	}
	return &pluginv1.EndTaskResponse{}, nil
}

// Client is the agent's handle on a running plugin; it implements Executor.
type Client struct {
	rpc pluginv1.ExecutorClient
}

var _ Executor = (*Client)(nil)

func (c *Client) Describe(ctx context.Context) (*pluginv1.DescribeResponse, error) {
	return c.rpc.Describe(ctx, &pluginv1.DescribeRequest{})
}

func (c *Client) Validate(ctx context.Context, action *pluginv1.Action) []*pluginv1.Violation {
	resp, err := c.rpc.Validate(ctx, &pluginv1.ValidateRequest{Action: action})
	if err != nil {
		return []*pluginv1.Violation{{Field: "plugin", Description: err.Error()}}
	}
	return resp.GetViolations()
}

// EndTask tells the plugin a task is over (a plugin of an older SDK
// without the call ignores it).
func (c *Client) EndTask(ctx context.Context, taskID string) {
	_, _ = c.rpc.EndTask(ctx, &pluginv1.EndTaskRequest{TaskId: taskID})
}

// Execute runs the action in the plugin. A plugin that dies or hangs up
// mid-action fails the action with the reason; nothing else is affected.
func (c *Client) Execute(ctx context.Context, action *pluginv1.Action, target *pluginv1.Target, stdout, stderr io.Writer) Result {
	stream, err := c.rpc.Execute(ctx, &pluginv1.ExecuteRequest{Action: action, Target: target})
	if err != nil {
		return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("plugin: %v", err)}
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			if status.Code(err) == codes.DeadlineExceeded {
				// The deadline travels with the call, and the plugin's side
				// may notice it a moment before ours: let ours catch up so
				// the caller sees its context ended.
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			switch {
			case ctx.Err() != nil:
				return Result{Status: StatusCancelled, ExitCode: -1, Error: "cancelled"}
			case errors.Is(err, io.EOF):
				return Result{Status: StatusFailed, ExitCode: -1, Error: "plugin ended the action without a result"}
			}
			return Result{Status: StatusFailed, ExitCode: -1, Error: fmt.Sprintf("plugin failed: %v", err)}
		}
		switch ev := msg.GetEvent().(type) {
		case *pluginv1.ExecuteResponse_Output:
			w := stdout
			if ev.Output.GetStream() == "stderr" {
				w = stderr
			}
			_, _ = w.Write(ev.Output.GetData())
		case *pluginv1.ExecuteResponse_Result:
			return Result{Status: ev.Result.GetStatus(), ExitCode: int(ev.Result.GetExitCode()), Error: ev.Result.GetError()}
		}
	}
}
