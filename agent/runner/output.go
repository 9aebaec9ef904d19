package runner

import (
	"slices"
	"strings"
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

	// secrets are masked in everything shipped. A secret may arrive split
	// across writes, so the last len(longest)-1 bytes of each stream wait
	// in carry until more comes or the action ends.
	secrets []string
	keep    int
	carry   map[streamKey][]byte
}

type streamKey struct {
	action int
	stream string
}

// secretMask replaces secret values in output.
const secretMask = "********"

// setSecrets makes the buffer mask these values.
func (b *outputBuffer) setSecrets(secrets []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.carry = map[streamKey][]byte{}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		b.secrets = append(b.secrets, s)
		b.keep = max(b.keep, len(s)-1)
	}
	// Longest first: a secret containing another must go whole, not
	// leave its remainder showing around the shorter one's mask.
	slices.SortFunc(b.secrets, func(x, y string) int { return len(y) - len(x) })
}

// maskString masks secrets in a message that does not go through the
// output stream (an error, a refusal reason).
func (b *outputBuffer) maskString(s string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.mask([]byte(s)))
}

func (b *outputBuffer) mask(p []byte) []byte {
	for _, s := range b.secrets {
		p = bytesReplace(p, s, secretMask)
	}
	return p
}

// endAction ships what a stream of the action still holds back.
func (b *outputBuffer) endAction(action int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, rest := range b.carry {
		if k.action == action && len(rest) > 0 {
			delete(b.carry, k)
			b.addLocked(k.action, k.stream, b.mask(rest))
		}
	}
}

const flushSize = 64 << 10

func newOutputBuffer(limit int64) *outputBuffer {
	return &outputBuffer{limit: limit, notify: make(chan struct{}, 1)}
}

func (b *outputBuffer) add(action int, stream string, p []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.secrets) > 0 {
		k := streamKey{action, stream}
		data := b.mask(append(b.carry[k], p...))
		hold := min(b.keep, len(data))
		b.carry[k] = append([]byte(nil), data[len(data)-hold:]...)
		p = data[:len(data)-hold]
	}
	b.addLocked(action, stream, p)
}

func (b *outputBuffer) addLocked(action int, stream string, p []byte) {
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

func bytesReplace(p []byte, old, new string) []byte {
	return []byte(strings.ReplaceAll(string(p), old, new))
}
