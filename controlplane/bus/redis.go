package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Redis is the bus on Redis Streams. Each event family is a stream
// (PREFIX:events:FAMILY, trimmed to about MaxLen entries); each group is
// a consumer group on the streams it reads, plus two streams of its own:
// PREFIX:replay:GROUP (dead letters sent back) and PREFIX:dead:GROUP.
// A delivery left unacknowledged for RetryAfter is claimed again by a
// consumer of the group (XPENDING / XCLAIM); one delivered MaxDeliveries
// times without success moves, atomically with its acknowledgement, to
// the dead stream.
type Redis struct {
	client *redis.Client
	prefix string
	opts   Options
	logger *zap.Logger
	// MaxLen bounds each family's stream (approximate trimming).
	maxLen int64
}

// NewRedis returns a bus on the client's Redis; prefix namespaces its
// keys (default "opsconductor").
func NewRedis(client *redis.Client, prefix string, opts Options, logger *zap.Logger) *Redis {
	if prefix == "" {
		prefix = "opsconductor"
	}
	return &Redis{client: client, prefix: prefix, opts: opts.withDefaults(), logger: logger.Named("bus"), maxLen: 1_000_000}
}

func (r *Redis) stream(family string) string   { return r.prefix + ":events:" + family }
func (r *Redis) replayKey(group string) string { return r.prefix + ":replay:" + group }
func (r *Redis) deadKey(group string) string   { return r.prefix + ":dead:" + group }
func (r *Redis) errorsKey(group string) string { return r.prefix + ":errors:" + group }

// Publish adds the events to their families' streams in one round trip.
func (r *Redis) Publish(ctx context.Context, events ...Event) error {
	pipe := r.client.Pipeline()
	for _, e := range events {
		if err := e.Validate(); err != nil {
			return err
		}
		body, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode event %s: %w", e.ID, err)
		}
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: r.stream(e.Family()), MaxLen: r.maxLen, Approx: true, Values: map[string]any{"event": body}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("publish %d events to redis: %w", len(events), err)
	}
	return nil
}

// Declare creates the group on the families' streams (and its replay
// stream) if need be, starting at the oldest entry they hold.
func (r *Redis) Declare(ctx context.Context, group string, families []string) error {
	c := &redisConsumer{r: r, group: group}
	for _, f := range families {
		c.streams = append(c.streams, r.stream(f))
	}
	c.streams = append(c.streams, r.replayKey(group))
	return c.createGroups(ctx)
}

// Consume reads the families' streams as a member of group until ctx
// ends. Redis going away is waited out (and logged), not returned.
func (r *Redis) Consume(ctx context.Context, group string, families []string, h Handler) error {
	host, _ := os.Hostname()
	c := &redisConsumer{r: r, group: group, h: h, name: fmt.Sprintf("%s-%d-%s", host, os.Getpid(), uuid.NewString()[:8])}
	for _, f := range families {
		c.streams = append(c.streams, r.stream(f))
	}
	c.streams = append(c.streams, r.replayKey(group))
	ready := false
	backoff := 100 * time.Millisecond
	var lastReclaim time.Time
	for ctx.Err() == nil {
		var err error
		if !ready {
			err = c.createGroups(ctx)
			ready = err == nil
		}
		if err == nil && time.Since(lastReclaim) >= r.reclaimEvery() {
			err = c.reclaim(ctx)
			lastReclaim = time.Now()
		}
		if err == nil {
			err = c.readNew(ctx)
		}
		if err != nil && strings.Contains(err.Error(), "NOGROUP") {
			ready = false // the stream or group went away (a flush, a restart without persistence): make them again
		}
		if err != nil && ctx.Err() == nil {
			r.logger.Warn("consume events", zap.String("group", group), zap.Error(err), zap.Duration("retry_in", backoff))
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
	return nil
}

func (r *Redis) reclaimEvery() time.Duration {
	return min(max(r.opts.RetryAfter/2, 50*time.Millisecond), 5*time.Second)
}

type redisConsumer struct {
	r       *Redis
	group   string
	name    string
	streams []string
	h       Handler
}

func (c *redisConsumer) createGroups(ctx context.Context) error {
	for _, s := range c.streams {
		// From the start of the stream: a new group gets what is there.
		err := c.r.client.XGroupCreateMkStream(ctx, s, c.group, "0").Err()
		if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			return fmt.Errorf("create group %s on %s: %w", c.group, s, err)
		}
	}
	return nil
}

func (c *redisConsumer) readNew(ctx context.Context) error {
	args := &redis.XReadGroupArgs{Group: c.group, Consumer: c.name, Count: int64(c.r.opts.Batch), Block: min(time.Second, c.r.reclaimEvery())}
	args.Streams = append(args.Streams, c.streams...)
	for range c.streams {
		args.Streams = append(args.Streams, ">")
	}
	res, err := c.r.client.XReadGroup(ctx, args).Result()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read streams: %w", err)
	}
	for _, s := range res {
		for _, m := range s.Messages {
			if err := c.handle(ctx, s.Stream, m); err != nil {
				return err
			}
		}
	}
	return nil
}

// reclaim takes over the group's deliveries left unacknowledged for
// RetryAfter: those delivered MaxDeliveries times go to the dead stream,
// the others are delivered again.
func (c *redisConsumer) reclaim(ctx context.Context) error {
	for _, s := range c.streams {
		pending, err := c.r.client.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: s, Group: c.group, Idle: c.r.opts.RetryAfter,
			Start: "-", End: "+", Count: int64(c.r.opts.Batch)}).Result()
		if err != nil {
			return fmt.Errorf("read pending of %s: %w", s, err)
		}
		for _, p := range pending {
			// XCLAIM with the minimum idle time makes one consumer the
			// owner; the others get nothing back.
			if p.RetryCount >= int64(c.r.opts.MaxDeliveries) {
				ids, err := c.r.client.XClaimJustID(ctx, &redis.XClaimArgs{Stream: s, Group: c.group, Consumer: c.name,
					MinIdle: c.r.opts.RetryAfter, Messages: []string{p.ID}}).Result()
				if err != nil {
					return fmt.Errorf("claim %s of %s: %w", p.ID, s, err)
				}
				if len(ids) == 1 {
					if err := c.bury(ctx, s, p.ID, int(p.RetryCount)); err != nil {
						return err
					}
				}
				continue
			}
			msgs, err := c.r.client.XClaim(ctx, &redis.XClaimArgs{Stream: s, Group: c.group, Consumer: c.name,
				MinIdle: c.r.opts.RetryAfter, Messages: []string{p.ID}}).Result()
			if err != nil {
				return fmt.Errorf("claim %s of %s: %w", p.ID, s, err)
			}
			for _, m := range msgs {
				if err := c.handle(ctx, s, m); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// handle delivers one message and acknowledges it when the handler
// succeeded; a failure is noted (for the dead letter) and left pending.
func (c *redisConsumer) handle(ctx context.Context, stream string, m redis.XMessage) error {
	e, err := decode(m)
	if err != nil {
		// Nothing will ever read it: straight to the dead letters.
		c.r.client.HSet(ctx, c.r.errorsKey(c.group), stream+"/"+m.ID, err.Error())
		return c.bury(ctx, stream, m.ID, 1)
	}
	if herr := c.h(ctx, e); herr != nil {
		if ctx.Err() != nil {
			return nil // stopping: left pending for another consumer
		}
		if err := c.r.client.HSet(ctx, c.r.errorsKey(c.group), stream+"/"+m.ID, herr.Error()).Err(); err != nil {
			return fmt.Errorf("note the failure of %s: %w", e.ID, err)
		}
		return nil
	}
	pipe := c.r.client.TxPipeline()
	pipe.XAck(ctx, stream, c.group, m.ID)
	if stream == c.r.replayKey(c.group) {
		pipe.XDel(ctx, stream, m.ID) // the group's own stream: nobody else reads it
	}
	pipe.HDel(ctx, c.r.errorsKey(c.group), stream+"/"+m.ID)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("acknowledge %s: %w", e.ID, err)
	}
	return nil
}

// bury moves a pending message to the group's dead stream and
// acknowledges it, in one transaction.
func (c *redisConsumer) bury(ctx context.Context, stream, id string, deliveries int) error {
	msgs, err := c.r.client.XRangeN(ctx, stream, id, id, 1).Result()
	if err != nil {
		return fmt.Errorf("read %s of %s: %w", id, stream, err)
	}
	lastErr, err := c.r.client.HGet(ctx, c.r.errorsKey(c.group), stream+"/"+id).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("read the failure of %s: %w", id, err)
	}
	pipe := c.r.client.TxPipeline()
	if len(msgs) == 1 { // trimmed away meanwhile: only acknowledge
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: c.r.deadKey(c.group), Values: map[string]any{
			"event": msgs[0].Values["event"], "stream": stream, "id": id, "deliveries": deliveries,
			"error": lastErr, "dead_at": time.Now().UTC().Format(time.RFC3339Nano)}})
	}
	pipe.XAck(ctx, stream, c.group, id)
	if stream == c.r.replayKey(c.group) {
		pipe.XDel(ctx, stream, id)
	}
	pipe.HDel(ctx, c.r.errorsKey(c.group), stream+"/"+id)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("move %s of %s to the dead letters: %w", id, stream, err)
	}
	c.r.logger.Warn("event moved to the dead letters", zap.String("group", c.group), zap.String("stream", stream),
		zap.String("message", id), zap.Int("deliveries", deliveries), zap.String("error", lastErr))
	return nil
}

func decode(m redis.XMessage) (Event, error) {
	var e Event
	raw, ok := m.Values["event"].(string)
	if !ok {
		return e, fmt.Errorf("message %s has no event field", m.ID)
	}
	if err := json.Unmarshal([]byte(raw), &e); err != nil {
		return e, fmt.Errorf("message %s: decode event: %w", m.ID, err)
	}
	return e, nil
}

// DeadLetters lists the group's dead letters, oldest first.
func (r *Redis) DeadLetters(ctx context.Context, group string) ([]DeadLetter, error) {
	msgs, err := r.client.XRange(ctx, r.deadKey(group), "-", "+").Result()
	if err != nil {
		return nil, fmt.Errorf("read the dead letters of %s: %w", group, err)
	}
	out := make([]DeadLetter, 0, len(msgs))
	for _, m := range msgs {
		d := DeadLetter{Ref: m.ID}
		d.Event, _ = decode(m) // an undecodable one is listed with what it has
		d.Deliveries, _ = strconv.Atoi(fmt.Sprint(m.Values["deliveries"]))
		d.LastError = fmt.Sprint(m.Values["error"])
		d.DeadAt, _ = time.Parse(time.RFC3339Nano, fmt.Sprint(m.Values["dead_at"]))
		out = append(out, d)
	}
	return out, nil
}

// Replay sends a dead letter back to its group (on the group's replay
// stream) and removes it from the dead letters, in one transaction.
func (r *Redis) Replay(ctx context.Context, group, ref string) error {
	msgs, err := r.client.XRangeN(ctx, r.deadKey(group), ref, ref, 1).Result()
	if err != nil {
		if strings.Contains(err.Error(), "Invalid stream ID") {
			return fmt.Errorf("group %s, dead letter %s: %w", group, ref, ErrNoDeadLetter)
		}
		return fmt.Errorf("read dead letter %s of %s: %w", ref, group, err)
	}
	if len(msgs) == 0 {
		return fmt.Errorf("group %s, dead letter %s: %w", group, ref, ErrNoDeadLetter)
	}
	pipe := r.client.TxPipeline()
	pipe.XAdd(ctx, &redis.XAddArgs{Stream: r.replayKey(group), Values: map[string]any{"event": msgs[0].Values["event"]}})
	pipe.XDel(ctx, r.deadKey(group), ref)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("replay dead letter %s of %s: %w", ref, group, err)
	}
	return nil
}
