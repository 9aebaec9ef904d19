// Package e2e holds the end-to-end tests: real opsconductor server
// processes on PostgreSQL or SQLite (and Redis where replicas share work),
// real opsconductor-agent processes, spoken to over REST like an operator's
// script would.
package e2e
