package bus_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/opsconductor/opsconductor/controlplane/bus"
	"github.com/opsconductor/opsconductor/controlplane/bus/bustest"
)

func TestMemoryContract(t *testing.T) {
	defer goleak.VerifyNone(t)
	bustest.Run(t, func(t *testing.T, opts bus.Options) bus.Bus { return bus.NewMemory(opts) })
}
