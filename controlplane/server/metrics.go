package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/opsconductor/opsconductor/controlplane/store"
)

// The infrastructure underneath, for /metrics: each store's connection
// pool, the Redis client's pool, the outboxes' lag and publish errors,
// and the queue depth. Values that need the database are read at scrape
// time, with a short timeout.

const scrapeTimeout = 2 * time.Second

// poolCollector reports the stores' connection pools.
type poolCollector struct {
	dbs                 []*store.DB
	open, inUse, idle   *prometheus.Desc
	waits, waitSeconds  *prometheus.Desc
	closedIdle, closedT *prometheus.Desc
}

func newPoolCollector(dbs []*store.DB) *poolCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, []string{"schema"}, nil)
	}
	return &poolCollector{dbs: dbs,
		open:        d("opsconductor_db_connections_open", "Open connections of a service's store."),
		inUse:       d("opsconductor_db_connections_in_use", "Connections in use."),
		idle:        d("opsconductor_db_connections_idle", "Idle connections."),
		waits:       d("opsconductor_db_connection_waits_total", "Times a connection was waited for."),
		waitSeconds: d("opsconductor_db_connection_wait_seconds_total", "Time spent waiting for a connection."),
		closedIdle:  d("opsconductor_db_connections_closed_idle_total", "Connections closed as idle too long or too many."),
		closedT:     d("opsconductor_db_connections_closed_lifetime_total", "Connections closed at the end of their lifetime."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.open, c.inUse, c.idle, c.waits, c.waitSeconds, c.closedIdle, c.closedT} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, db := range c.dbs {
		s, schema := db.Stats(), db.Schema()
		ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(s.OpenConnections), schema)
		ch <- prometheus.MustNewConstMetric(c.inUse, prometheus.GaugeValue, float64(s.InUse), schema)
		ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, float64(s.Idle), schema)
		ch <- prometheus.MustNewConstMetric(c.waits, prometheus.CounterValue, float64(s.WaitCount), schema)
		ch <- prometheus.MustNewConstMetric(c.waitSeconds, prometheus.CounterValue, s.WaitDuration.Seconds(), schema)
		ch <- prometheus.MustNewConstMetric(c.closedIdle, prometheus.CounterValue, float64(s.MaxIdleClosed+s.MaxIdleTimeClosed), schema)
		ch <- prometheus.MustNewConstMetric(c.closedT, prometheus.CounterValue, float64(s.MaxLifetimeClosed), schema)
	}
}

// redisCollector reports the Redis client's connection pool.
type redisCollector struct {
	client                 *redis.Client
	hits, misses, timeouts *prometheus.Desc
	total, idle, stale     *prometheus.Desc
}

func newRedisCollector(client *redis.Client) *redisCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("opsconductor_redis_pool_"+name, help, nil, nil)
	}
	return &redisCollector{client: client,
		hits: d("opsconductor_redis_pool_hits_total", "Connections taken from the pool."), misses: d("opsconductor_redis_pool_misses_total", "Connections the pool had to open."),
		timeouts: d("opsconductor_redis_pool_timeouts_total", "Waits for a connection that timed out."),
		total:    d("opsconductor_redis_pool_connections", "Connections in the pool."), idle: d("opsconductor_redis_pool_idle_connections", "Idle connections in the pool."),
		stale: d("opsconductor_redis_pool_stale_connections_total", "Stale connections removed from the pool."),
	}
}

func (c *redisCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.hits, c.misses, c.timeouts, c.total, c.idle, c.stale} {
		ch <- d
	}
}

func (c *redisCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.client.PoolStats()
	ch <- prometheus.MustNewConstMetric(c.hits, prometheus.CounterValue, float64(s.Hits))
	ch <- prometheus.MustNewConstMetric(c.misses, prometheus.CounterValue, float64(s.Misses))
	ch <- prometheus.MustNewConstMetric(c.timeouts, prometheus.CounterValue, float64(s.Timeouts))
	ch <- prometheus.MustNewConstMetric(c.total, prometheus.GaugeValue, float64(s.TotalConns))
	ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, float64(s.IdleConns))
	ch <- prometheus.MustNewConstMetric(c.stale, prometheus.CounterValue, float64(s.StaleConns))
}

// registerInfraMetrics registers the collectors above and the gauges read
// at scrape time.
func (a *App) registerInfraMetrics(reg prometheus.Registerer, queued func(context.Context) (int64, error), tasks bool) {
	reg.MustRegister(newPoolCollector(a.dbs))
	if a.redis != nil {
		reg.MustRegister(newRedisCollector(a.redis))
	}
	if r := a.rabbit; r != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "opsconductor_rabbitmq_connected", Help: "1 when the connection to RabbitMQ is open."},
			func() float64 {
				if r.Connected() {
					return 1
				}
				return 0
			}),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "opsconductor_rabbitmq_connections_total", Help: "Connections made to RabbitMQ (more than one: it was lost and dialled again)."},
				func() float64 { return float64(r.Dials()) }))
	}
	if tasks { // the executions service runs here
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "opsconductor_tasks_queued", Help: "Tasks waiting for an agent (the queue depth)."},
			func() float64 {
				ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
				defer cancel()
				n, err := queued(ctx)
				if err != nil {
					return -1
				}
				return float64(n)
			}))
	}
	for _, p := range a.publishers {
		labels := prometheus.Labels{"schema": p.Schema()}
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "opsconductor_outbox_unpublished", ConstLabels: labels,
			Help: "Committed events of a service not yet on the event bus (the outbox lag; -1 when it cannot be read)."},
			func() float64 {
				ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
				defer cancel()
				n, err := p.Lag(ctx)
				if err != nil {
					return -1
				}
				return float64(n)
			}))
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "opsconductor_outbox_publish_errors_total", ConstLabels: labels,
			Help: "Failed attempts to publish a service's outbox to the event bus."}, func() float64 { return float64(p.Errors()) }))
	}
}
