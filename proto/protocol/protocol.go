// Package protocol holds the version contract between agents and the
// control plane, shared by both binaries (neither imports the other).
package protocol

// AgentProtocolVersion is the agent protocol this build speaks. Bump it on
// any change an older peer cannot handle, and keep the server accepting
// MinAgentProtocolVersion..AgentProtocolVersion.
const AgentProtocolVersion = 1

// MinAgentProtocolVersion is the oldest agent protocol the server accepts.
const MinAgentProtocolVersion = 1

// Version is the release of this build, set at link time with
// -ldflags "-X github.com/opsconductor/opsconductor/proto/protocol.Version=v1.2.3".
var Version = "dev"
