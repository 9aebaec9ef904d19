package winrmtest

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"net/http"
	"strings"
	"unicode/utf16"

	"golang.org/x/crypto/md4" //nolint:staticcheck // NTLM is built on MD4; this emulates it.
)

// The NTLM side of the emulator: a connection-based NTLMv2 handshake as a
// Windows host runs it (negotiate, challenge, authenticate; the
// connection then stays authenticated). It verifies the client's NTLMv2
// response against the emulator's user and password.

// ntlmDomain is the domain the emulator's challenge names.
const ntlmDomain = "EMULATOR"

// RequireNTLM makes the emulator accept only NTLM, not Basic.
func (s *Server) RequireNTLM() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ntlm = true
	s.challenges = map[string][]byte{}
	s.authed = map[string]bool{}
}

func utf16le(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u))
	for i, r := range u {
		binary.LittleEndian.PutUint16(b[2*i:], r)
	}
	return b
}

func fromUTF16le(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return string(utf16.Decode(u))
}

func hmacMD5(key []byte, data ...[]byte) []byte {
	m := hmac.New(md5.New, key)
	for _, d := range data {
		m.Write(d)
	}
	return m.Sum(nil)
}

// challengeMessage builds an NTLM CHALLENGE (type 2) message.
func challengeMessage(challenge []byte) []byte {
	target := utf16le(ntlmDomain)
	var info bytes.Buffer
	_ = binary.Write(&info, binary.LittleEndian, uint16(2)) // MsvAvNbDomainName
	_ = binary.Write(&info, binary.LittleEndian, uint16(len(target)))
	info.Write(target)
	info.Write([]byte{0, 0, 0, 0}) // MsvAvEOL
	const header = 48
	var m bytes.Buffer
	m.WriteString("NTLMSSP\x00")
	_ = binary.Write(&m, binary.LittleEndian, uint32(2))
	// TargetName
	_ = binary.Write(&m, binary.LittleEndian, uint16(len(target)))
	_ = binary.Write(&m, binary.LittleEndian, uint16(len(target)))
	_ = binary.Write(&m, binary.LittleEndian, uint32(header))
	// Unicode, request target, NTLM, extended session security, target
	// info; no LM key, no key exchange.
	_ = binary.Write(&m, binary.LittleEndian, uint32(0x00000001|0x00000004|0x00000200|0x00080000|0x00800000))
	m.Write(challenge)
	m.Write(make([]byte, 8))
	// TargetInfo
	_ = binary.Write(&m, binary.LittleEndian, uint16(info.Len()))
	_ = binary.Write(&m, binary.LittleEndian, uint16(info.Len()))
	_ = binary.Write(&m, binary.LittleEndian, uint32(header+len(target)))
	m.Write(target)
	m.Write(info.Bytes())
	return m.Bytes()
}

// field reads the security buffer at off of an NTLM message.
func field(msg []byte, off int) ([]byte, bool) {
	if len(msg) < off+8 {
		return nil, false
	}
	n := int(binary.LittleEndian.Uint16(msg[off:]))
	at := int(binary.LittleEndian.Uint32(msg[off+4:]))
	if at < 0 || at+n > len(msg) {
		return nil, false
	}
	return msg[at : at+n], true
}

// verifyAuthenticate checks an AUTHENTICATE (type 3) message's NTLMv2
// response for user/password against challenge.
func verifyAuthenticate(msg, challenge []byte, user, password string) bool {
	if len(msg) < 64 || string(msg[:8]) != "NTLMSSP\x00" || binary.LittleEndian.Uint32(msg[8:]) != 3 {
		return false
	}
	nt, ok1 := field(msg, 20)
	domain, ok2 := field(msg, 28)
	name, ok3 := field(msg, 36)
	if !ok1 || !ok2 || !ok3 || len(nt) < 17 || !strings.EqualFold(fromUTF16le(name), user) {
		return false
	}
	h := md4.New()
	h.Write(utf16le(password))
	v2 := hmacMD5(h.Sum(nil), utf16le(strings.ToUpper(fromUTF16le(name))+fromUTF16le(domain)))
	return hmac.Equal(nt[:16], hmacMD5(v2, challenge, nt[16:]))
}

// ntlmAuth runs the handshake; it reports whether the request may go on
// (the connection is authenticated), having answered it otherwise.
func (s *Server) ntlmAuth(w http.ResponseWriter, r *http.Request) bool {
	conn := r.RemoteAddr
	s.mu.Lock()
	authed := s.authed[conn]
	s.mu.Unlock()
	if authed {
		return true
	}
	refuse := func(header string) {
		w.Header().Set("WWW-Authenticate", header)
		http.Error(w, "access denied", http.StatusUnauthorized)
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "NTLM ")
	if !ok {
		refuse("NTLM")
		return false
	}
	msg, err := base64.StdEncoding.DecodeString(token)
	if err != nil || len(msg) < 12 || string(msg[:8]) != "NTLMSSP\x00" {
		refuse("NTLM")
		return false
	}
	switch binary.LittleEndian.Uint32(msg[8:]) {
	case 1:
		challenge := make([]byte, 8)
		_, _ = rand.Read(challenge)
		s.mu.Lock()
		s.challenges[conn] = challenge
		s.mu.Unlock()
		refuse("NTLM " + base64.StdEncoding.EncodeToString(challengeMessage(challenge)))
		return false
	case 3:
		s.mu.Lock()
		challenge := s.challenges[conn]
		delete(s.challenges, conn)
		s.mu.Unlock()
		if challenge == nil || !verifyAuthenticate(msg, challenge, s.User, s.Password) {
			refuse("NTLM")
			return false
		}
		s.mu.Lock()
		s.authed[conn] = true
		s.calls = append(s.calls, Call{Action: "NTLM"})
		s.mu.Unlock()
		return true
	}
	refuse("NTLM")
	return false
}
