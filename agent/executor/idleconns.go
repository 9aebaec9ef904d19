package executor

import (
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// IdleConns keeps the SSH connections of finished tasks open for a while
// (the agent's --ssh-persist, like OpenSSH's ControlPersist), so the next
// task on the same host with the same login skips the TCP and SSH
// handshakes. A connection is owned by one task at a time: a task takes it
// out of the pool and gives it back when it ends; one left idle for the
// whole period is closed. A nil *IdleConns keeps nothing.
type IdleConns struct {
	persist time.Duration

	mu     sync.Mutex
	idle   map[string][]*idleConn
	closed bool
}

type idleConn struct {
	client *ssh.Client
	timer  *time.Timer
}

// NewIdleConns returns an empty pool that keeps a connection for persist.
func NewIdleConns(persist time.Duration) *IdleConns {
	return &IdleConns{persist: persist, idle: map[string][]*idleConn{}}
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
	defer p.mu.Unlock()
	if p.closed {
		client.Close()
		return
	}
	c := &idleConn{client: client}
	c.timer = time.AfterFunc(p.persist, func() { p.expire(key, c) })
	p.idle[key] = append(p.idle[key], c)
}

// expire closes c if it is still idle.
func (p *IdleConns) expire(key string, c *idleConn) {
	p.mu.Lock()
	list := p.idle[key]
	i := -1
	for j, x := range list {
		if x == c {
			i = j
			break
		}
	}
	if i < 0 {
		p.mu.Unlock()
		return // a task took it
	}
	list = append(list[:i], list[i+1:]...)
	if len(list) == 0 {
		delete(p.idle, key)
	} else {
		p.idle[key] = list
	}
	p.mu.Unlock()
	c.client.Close()
}

// Len is how many connections are idle.
func (p *IdleConns) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, list := range p.idle {
		n += len(list)
	}
	return n
}

// Close closes every idle connection; later ones are closed when given
// back.
func (p *IdleConns) Close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = map[string][]*idleConn{}
	p.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			c.timer.Stop()
			c.client.Close()
		}
	}
}
