// Package winrmtest is a WS-Management (WinRM) server EMULATOR for tests.
// No Windows host exists on our build machines, so the WinRM executor is
// tested against this instead of Windows: it speaks the protocol the
// masterzen/winrm client uses (shell create, command, receive, signal,
// delete, the OperationTimeout fault) over HTTP or HTTPS with Basic or
// NTLMv2 authentication, and "runs" commands with a tiny interpreter of a few
// cmd and PowerShell statements (PowerShell arrives as -EncodedCommand, as
// from a real client). It proves our protocol handling, output streaming,
// exit codes, cancellation and error reporting; it proves nothing about
// Windows itself.
//
// cmd statements (joined by " & "): echo TEXT, echo TEXT 1>&2 (stderr),
// timeout /t N (sleep N seconds), exit /b N. PowerShell statements (joined
// by ";" or new lines): Write-Output X, Write-Error X (stderr),
// Start-Sleep -Seconds N, exit N. Anything else fails as Windows would
// ("is not recognized").
package winrmtest

import (
	"encoding/base64"
	"encoding/pem"
	"encoding/xml"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf16"
)

// Protocol URIs.
const (
	nsShell         = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
	actionCreate    = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
	actionDelete    = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
	actionCommand   = nsShell + "/Command"
	actionReceive   = nsShell + "/Receive"
	actionSignal    = nsShell + "/Signal"
	actionSend      = nsShell + "/Send"
	stateDone       = nsShell + "/CommandState/Done"
	stateRunning    = nsShell + "/CommandState/Running"
	signalTerminate = nsShell + "/signal/terminate"
)

// Call is one request the emulator answered, for tests to check the
// protocol exchange.
type Call struct {
	Action    string // the short name: Create, Command, Receive, Signal, Delete, Send
	ShellID   string
	CommandID string
	Command   string // Command: the command line as sent
	Script    string // Command: a PowerShell -EncodedCommand, decoded
	Signal    string // Signal: the code
}

// Server is a running emulator.
type Server struct {
	Host     string
	Port     int
	User     string
	Password string
	// CA is the PEM of the certificate an HTTPS emulator serves.
	CA []byte

	srv *httptest.Server

	mu         sync.Mutex
	ntlm       bool              // NTLM only (RequireNTLM)
	challenges map[string][]byte // NTLM: connection -> challenge sent
	authed     map[string]bool   // NTLM: authenticated connections
	calls      []Call
	shells     map[string]bool
	commands   map[string]*command
	next       int
}

// Start runs an emulator on a loopback port (HTTPS when tlsOn) until the
// test ends. It accepts Basic authentication as user/password.
func Start(t testing.TB, user, password string, tlsOn bool) *Server {
	t.Helper()
	s := &Server{User: user, Password: password, shells: map[string]bool{}, commands: map[string]*command{}}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	// Refused certificates are part of the tests: keep their handshake
	// errors out of the output.
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if tlsOn {
		s.srv.StartTLS()
		s.CA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
	} else {
		s.srv.Start()
	}
	t.Cleanup(s.srv.Close)
	host, port, _ := net.SplitHostPort(s.srv.Listener.Addr().String())
	s.Host = host
	s.Port, _ = strconv.Atoi(port)
	return s
}

// Calls returns the requests answered so far.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// OpenShells is how many shells were created and not deleted.
func (s *Server) OpenShells() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.shells)
}

// envelope is the part of a request the emulator reads. encoding/xml
// matches local names in any namespace.
type envelope struct {
	Header struct {
		Action    string `xml:"Action"`
		Selectors []struct {
			Name  string `xml:"Name,attr"`
			Value string `xml:",chardata"`
		} `xml:"SelectorSet>Selector"`
	} `xml:"Header"`
	Body struct {
		CommandLine *struct {
			Command   string   `xml:"Command"`
			Arguments []string `xml:"Arguments"`
		} `xml:"CommandLine"`
		Receive *struct {
			Stream struct {
				CommandID string `xml:"CommandId,attr"`
			} `xml:"DesiredStream"`
		} `xml:"Receive"`
		Signal *struct {
			CommandID string `xml:"CommandId,attr"`
			Code      string `xml:"Code"`
		} `xml:"Signal"`
	} `xml:"Body"`
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	ntlm := s.ntlm
	s.mu.Unlock()
	if ntlm {
		if !s.ntlmAuth(w, r) {
			return
		}
	} else if user, pass, ok := r.BasicAuth(); !ok || user != s.User || pass != s.Password {
		w.Header().Set("WWW-Authenticate", `Basic realm="WSMAN"`)
		http.Error(w, "access denied", http.StatusUnauthorized)
		return
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var env envelope
	if err := xml.Unmarshal(raw, &env); err != nil {
		fault(w, "s:Sender", "malformed envelope: "+err.Error())
		return
	}
	shellID := ""
	for _, sel := range env.Header.Selectors {
		if sel.Name == "ShellId" {
			shellID = sel.Value
		}
	}
	switch env.Header.Action {
	case actionCreate:
		s.mu.Lock()
		s.next++
		id := fmt.Sprintf("SHELL-%04d", s.next)
		s.shells[id] = true
		s.calls = append(s.calls, Call{Action: "Create", ShellID: id})
		s.mu.Unlock()
		reply(w, "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse", `<x:ResourceCreated xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer">
<a:ReferenceParameters><w:SelectorSet><w:Selector Name="ShellId">`+id+`</w:Selector></w:SelectorSet></a:ReferenceParameters>
</x:ResourceCreated><rsp:Shell><rsp:ShellId>`+id+`</rsp:ShellId></rsp:Shell>`)
	case actionCommand:
		if !s.hasShell(shellID) || env.Body.CommandLine == nil {
			fault(w, "w:InvalidSelectors", "unknown shell "+shellID)
			return
		}
		line := env.Body.CommandLine.Command
		if len(env.Body.CommandLine.Arguments) > 0 {
			line += " " + strings.Join(env.Body.CommandLine.Arguments, " ")
		}
		c := newCommand(line)
		s.mu.Lock()
		s.next++
		id := fmt.Sprintf("CMD-%04d", s.next)
		s.commands[id] = c
		s.calls = append(s.calls, Call{Action: "Command", ShellID: shellID, CommandID: id, Command: line, Script: c.script})
		s.mu.Unlock()
		go c.run()
		reply(w, actionCommand+"Response", `<rsp:CommandResponse><rsp:CommandId>`+id+`</rsp:CommandId></rsp:CommandResponse>`)
	case actionReceive:
		if env.Body.Receive == nil {
			fault(w, "s:Sender", "receive without a stream")
			return
		}
		id := env.Body.Receive.Stream.CommandID
		s.mu.Lock()
		c := s.commands[id]
		s.calls = append(s.calls, Call{Action: "Receive", ShellID: shellID, CommandID: id})
		s.mu.Unlock()
		if c == nil {
			fault(w, "w:InvalidSelectors", "unknown command "+id)
			return
		}
		chunks, done, exit := c.receive(500 * time.Millisecond)
		if len(chunks) == 0 && !done {
			// As Windows does when a command is silent for the whole
			// operation timeout; the client asks again.
			fault(w, "w:TimedOut", "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.")
			return
		}
		var b strings.Builder
		b.WriteString("<rsp:ReceiveResponse>")
		for _, ch := range chunks {
			fmt.Fprintf(&b, `<rsp:Stream Name="%s" CommandId="%s">%s</rsp:Stream>`, ch.stream, id, base64.StdEncoding.EncodeToString([]byte(ch.data)))
		}
		if done {
			fmt.Fprintf(&b, `<rsp:CommandState CommandId="%s" State="%s"><rsp:ExitCode>%d</rsp:ExitCode></rsp:CommandState>`, id, stateDone, exit)
		} else {
			fmt.Fprintf(&b, `<rsp:CommandState CommandId="%s" State="%s"/>`, id, stateRunning)
		}
		b.WriteString("</rsp:ReceiveResponse>")
		reply(w, actionReceive+"Response", b.String())
	case actionSignal:
		if env.Body.Signal == nil {
			fault(w, "s:Sender", "signal without a command")
			return
		}
		id := env.Body.Signal.CommandID
		s.mu.Lock()
		c := s.commands[id]
		s.calls = append(s.calls, Call{Action: "Signal", ShellID: shellID, CommandID: id, Signal: env.Body.Signal.Code})
		s.mu.Unlock()
		if c != nil && env.Body.Signal.Code == signalTerminate {
			c.terminate()
		}
		reply(w, actionSignal+"Response", `<rsp:SignalResponse/>`)
	case actionSend:
		s.record(Call{Action: "Send", ShellID: shellID})
		reply(w, actionSend+"Response", `<rsp:SendResponse/>`)
	case actionDelete:
		s.mu.Lock()
		delete(s.shells, shellID)
		s.calls = append(s.calls, Call{Action: "Delete", ShellID: shellID})
		s.mu.Unlock()
		reply(w, "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse", "")
	default:
		fault(w, "a:ActionNotSupported", "the emulator does not implement "+env.Header.Action)
	}
}

func (s *Server) hasShell(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shells[id]
}

func (s *Server) record(c Call) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, c)
}

const envelopeOpen = `<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" ` +
	`xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell">`

func reply(w http.ResponseWriter, action, body string) {
	w.Header().Set("Content-Type", "application/soap+xml;charset=UTF-8")
	fmt.Fprintf(w, `%s<s:Header><a:Action>%s</a:Action></s:Header><s:Body>%s</s:Body></s:Envelope>`, envelopeOpen, action, body)
}

func fault(w http.ResponseWriter, code, reason string) {
	w.Header().Set("Content-Type", "application/soap+xml;charset=UTF-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `%s<s:Header><a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action></s:Header><s:Body><s:Fault>`+
		`<s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>%s</s:Value></s:Subcode></s:Code>`+
		`<s:Reason><s:Text xml:lang="en-US">%s</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>`, envelopeOpen, code, xmlEscape(reason))
}

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// decodePowerShell returns the script of a "powershell.exe -EncodedCommand
// B64" line (base64 of UTF-16LE), or "" for anything else.
func decodePowerShell(line string) string {
	fields := strings.Fields(line)
	if len(fields) != 3 || !strings.EqualFold(fields[0], "powershell.exe") || !strings.EqualFold(fields[1], "-EncodedCommand") {
		return ""
	}
	raw, err := base64.StdEncoding.DecodeString(fields[2])
	if err != nil || len(raw)%2 != 0 {
		return ""
	}
	u := make([]uint16, len(raw)/2)
	for i := range u {
		u[i] = uint16(raw[2*i]) | uint16(raw[2*i+1])<<8
	}
	return string(utf16.Decode(u))
}
