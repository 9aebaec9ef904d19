package cli

import (
	"net/http"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
)

// httpClient is the client operator commands use. Its lack of an overall
// timeout is deliberate: --follow streams for as long as the execution runs.
func httpClient() *http.Client { return http.DefaultClient }

func durationpbNew(d time.Duration) *durationpb.Duration { return durationpb.New(d) }
