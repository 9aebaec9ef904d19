package runner

import (
	"sync"
)

// chunk is output of one action on one stream.
type chunk struct {
	action int
	stream string
	data   []byte
}

// outputBuffer collects output from running actions until the shipper takes
// it. It keeps at most limit+1 bytes in total over the task's life: the
// control plane cuts at limit and marks the cut, so more would only be
// dropped there.
type outputBuffer struct {
	mu       sync.Mutex
	pending  []chunk
	size     int
	accepted int64
	limit    int64
	notify   chan struct{} // signalled when pending passes flushSize
}

const flushSize = 64 << 10

func newOutputBuffer(limit int64) *outputBuffer {
	return &outputBuffer{limit: limit, notify: make(chan struct{}, 1)}
}

func (b *outputBuffer) add(action int, stream string, p []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := b.limit + 1 - b.accepted
	if room <= 0 {
		return
	}
	if int64(len(p)) > room {
		p = p[:room]
	}
	b.accepted += int64(len(p))
	data := append([]byte(nil), p...)
	if n := len(b.pending); n > 0 && b.pending[n-1].action == action && b.pending[n-1].stream == stream {
		b.pending[n-1].data = append(b.pending[n-1].data, data...)
	} else {
		b.pending = append(b.pending, chunk{action: action, stream: stream, data: data})
	}
	b.size += len(data)
	if b.size >= flushSize {
		select {
		case b.notify <- struct{}{}:
		default:
		}
	}
}

// take returns and clears what is pending.
func (b *outputBuffer) take() []chunk {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.pending
	b.pending, b.size = nil, 0
	return out
}

// streamWriter is the io.Writer one action's stream writes to.
type streamWriter struct {
	buf    *outputBuffer
	action int
	stream string
}

func (w streamWriter) Write(p []byte) (int, error) {
	w.buf.add(w.action, w.stream, p)
	return len(p), nil
}
