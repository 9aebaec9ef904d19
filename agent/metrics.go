package agent

import "github.com/prometheus/client_golang/prometheus"

// Metrics are what the agent tells Prometheus about its work (the
// control plane counts tasks by outcome; these show one host's side).
type Metrics struct {
	tasksRunning prometheus.Gauge
	tasksStarted prometheus.Counter
	polls        prometheus.Counter
	pollErrors   prometheus.Counter
}

// NewMetrics registers the agent's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		tasksRunning: prometheus.NewGauge(prometheus.GaugeOpts{Name: "opsconductor_agent_tasks_running", Help: "Tasks this agent is running now."}),
		tasksStarted: prometheus.NewCounter(prometheus.CounterOpts{Name: "opsconductor_agent_tasks_started_total", Help: "Tasks this agent has started."}),
		polls:        prometheus.NewCounter(prometheus.CounterOpts{Name: "opsconductor_agent_polls_total", Help: "Long-polls to the control plane that were answered."}),
		pollErrors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "opsconductor_agent_poll_errors_total", Help: "Long-polls that failed (retried with backoff)."}),
	}
	reg.MustRegister(m.tasksRunning, m.tasksStarted, m.polls, m.pollErrors)
	return m
}
