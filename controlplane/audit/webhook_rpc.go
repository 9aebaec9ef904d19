package audit

import (
	"context"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/opsconductor/opsconductor/controlplane/apperr"
	"github.com/opsconductor/opsconductor/controlplane/auth"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
)

func toWebhook(w Webhook) *opsconductorv1.Webhook {
	return &opsconductorv1.Webhook{Id: w.ID, Name: w.Name, Url: w.URL, EventTypes: w.EventTypes, State: w.State, Failures: int32(w.Failures),
		DisabledReason: w.DisabledReason, CreatedBy: w.CreatedBy, CreateTime: timestamppb.New(w.CreatedAt)}
}

// CreateWebhook subscribes a URL to events.
func (s *Service) CreateWebhook(ctx context.Context, req *connect.Request[opsconductorv1.CreateWebhookRequest]) (*connect.Response[opsconductorv1.CreateWebhookResponse], error) {
	w := req.Msg.GetWebhook()
	if w == nil {
		return nil, apperr.InvalidField("webhook", "is required")
	}
	by := ""
	if p, ok := auth.PrincipalFrom(ctx); ok {
		by = p.Name
	}
	created, err := s.notifier.CreateWebhook(ctx, w.GetName(), w.GetUrl(), w.GetEventTypes(), req.Msg.GetSecret(), by)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.CreateWebhookResponse{Webhook: toWebhook(created)}), nil
}

// ListWebhooks lists the subscriptions (never their secrets).
func (s *Service) ListWebhooks(ctx context.Context, _ *connect.Request[opsconductorv1.ListWebhooksRequest]) (*connect.Response[opsconductorv1.ListWebhooksResponse], error) {
	hooks, err := s.notifier.Webhooks(ctx)
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListWebhooksResponse{}
	for _, w := range hooks {
		resp.Webhooks = append(resp.Webhooks, toWebhook(w))
	}
	return connect.NewResponse(resp), nil
}

// DeleteWebhook removes a subscription.
func (s *Service) DeleteWebhook(ctx context.Context, req *connect.Request[opsconductorv1.DeleteWebhookRequest]) (*connect.Response[opsconductorv1.DeleteWebhookResponse], error) {
	if err := s.notifier.DeleteWebhook(ctx, req.Msg.GetId()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.DeleteWebhookResponse{}), nil
}

// EnableWebhook makes a disabled subscription active again.
func (s *Service) EnableWebhook(ctx context.Context, req *connect.Request[opsconductorv1.EnableWebhookRequest]) (*connect.Response[opsconductorv1.EnableWebhookResponse], error) {
	if err := s.notifier.EnableWebhook(ctx, req.Msg.GetId()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&opsconductorv1.EnableWebhookResponse{}), nil
}

// ListWebhookDeliveries is a subscription's delivery log.
func (s *Service) ListWebhookDeliveries(ctx context.Context, req *connect.Request[opsconductorv1.ListWebhookDeliveriesRequest]) (*connect.Response[opsconductorv1.ListWebhookDeliveriesResponse], error) {
	if req.Msg.GetLimit() < 0 || req.Msg.GetLimit() > 1000 {
		return nil, apperr.InvalidField("limit", "must be between 0 and 1000")
	}
	log, err := s.notifier.Attempts(ctx, req.Msg.GetId(), int(req.Msg.GetLimit()))
	if err != nil {
		return nil, err
	}
	resp := &opsconductorv1.ListWebhookDeliveriesResponse{}
	for _, a := range log {
		resp.Attempts = append(resp.Attempts, &opsconductorv1.WebhookAttempt{EventId: a.EventID, EventType: a.EventType, State: a.State,
			Attempt: int32(a.Attempt), Time: timestamppb.New(a.At), StatusCode: int32(a.StatusCode), Error: a.Error,
			DurationSeconds: a.Duration.Seconds()})
	}
	return connect.NewResponse(resp), nil
}
