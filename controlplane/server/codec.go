package server

import (
	"fmt"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// badInputJSONCodec is vanguard's JSON codec, except that a body it cannot
// decode is the caller's fault: InvalidArgument (HTTP 400), not the
// Unknown (HTTP 500) the transcoder would otherwise report.
type badInputJSONCodec struct {
	*vanguard.JSONCodec
}

var _ vanguard.RESTCodec = badInputJSONCodec{}

func newJSONCodec(res vanguard.TypeResolver) vanguard.Codec {
	c := vanguard.NewJSONCodec(res)
	// Accept fields a newer client sends that this server does not know.
	c.UnmarshalOptions.DiscardUnknown = true
	return badInputJSONCodec{c}
}

func (c badInputJSONCodec) Unmarshal(data []byte, msg proto.Message) error {
	if err := c.JSONCodec.Unmarshal(data, msg); err != nil {
		return malformed(err)
	}
	return nil
}

func (c badInputJSONCodec) UnmarshalField(data []byte, msg proto.Message, field protoreflect.FieldDescriptor) error {
	if err := c.JSONCodec.UnmarshalField(data, msg, field); err != nil {
		return malformed(err)
	}
	return nil
}

func malformed(err error) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("malformed JSON body: %w", err))
}
