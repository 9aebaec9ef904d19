package executor

import (
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// IdleConns keeps the SSH connections of finished tasks open for a while
// (the agent's --ssh-persist, like OpenSSH's ControlPersist), so the next
// task on the same host with the same login skips the TCP and SSH
// handshakes. A connection is owned by one task at a time: a task takes it
// out of the pool and gives it back when it ends; one left idle for the
// whole period is closed, and so is the oldest when more than max are
// idle (a run over 5,000 hosts does not keep 5,000 logins open). A nil
// *IdleConns keeps nothing.
type IdleConns struct {
	persist time.Duration
	max     int

	mu     sync.Mutex
	idle   map[string][]*idleConn
	count  int
	closed bool
}

type idleConn struct {
	client *ssh.Client
	timer  *time.Timer
	since  time.Time
}

// NewIdleConns returns an empty pool that keeps up to limit connections
// (at least 1), each for persist.
func NewIdleConns(persist time.Duration, limit int) *IdleConns {
	return &IdleConns{persist: persist, max: max(limit, 1), idle: map[string][]*idleConn{}}
}

// take returns an idle connection for key, now the caller's, or nil. The
// most recently used comes first: it is the likeliest to be alive.
func (p *IdleConns) take(key string) *ssh.Client {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[key]
	if len(list) == 0 {
		return nil
	}
	c := list[len(list)-1]
	if len(list) == 1 {
		delete(p.idle, key)
	} else {
		p.idle[key] = list[:len(list)-1]
	}
	p.count--
	c.timer.Stop() // if it already fired, expire finds c gone and leaves it
	return c.client
}

// put keeps client for the next task on key, for the pool's period.
func (p *IdleConns) put(key string, client *ssh.Client) {
	if p == nil {
		client.Close()
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		client.Close()
		return
	}
	var evicted *ssh.Client
	if p.count >= p.max {
		evicted = p.removeOldest()
	}
	c := &idleConn{client: client, since: time.Now()}
	c.timer = time.AfterFunc(p.persist, func() { p.expire(key, c) })
	p.idle[key] = append(p.idle[key], c)
	p.count++
	p.mu.Unlock()
	if evicted != nil {
		evicted.Close()
	}
}

// removeOldest takes the connection idle longest out of the pool and
// returns it to be closed. p.mu is held.
func (p *IdleConns) removeOldest() *ssh.Client {
	var oldestKey string
	var oldest *idleConn
	for key, list := range p.idle {
		if c := list[0]; oldest == nil || c.since.Before(oldest.since) { // each list is oldest first
			oldestKey, oldest = key, c
		}
	}
	if oldest == nil {
		return nil
	}
	oldest.timer.Stop()
	p.remove(oldestKey, oldest)
	return oldest.client
}

// remove takes c out of key's list. p.mu is held.
func (p *IdleConns) remove(key string, c *idleConn) bool {
	list := p.idle[key]
	i := slices.Index(list, c)
	if i < 0 {
		return false
	}
	list = slices.Delete(list, i, i+1)
	if len(list) == 0 {
		delete(p.idle, key)
	} else {
		p.idle[key] = list
	}
	p.count--
	return true
}

// expire closes c if it is still idle.
func (p *IdleConns) expire(key string, c *idleConn) {
	p.mu.Lock()
	found := p.remove(key, c)
	p.mu.Unlock()
	if found { // else a task took it, or it was evicted
		c.client.Close()
	}
}

// Len is how many connections are idle.
func (p *IdleConns) Len() int {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count
}

// Close closes every idle connection; later ones are closed when given
// back.
func (p *IdleConns) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle, p.count = map[string][]*idleConn{}, 0
	p.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			c.timer.Stop()
			c.client.Close()
		}
	}
}
