package broker_test

import (
	"testing"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/broker/brokertest"
)

func TestInMemoryConformance(t *testing.T) {
	brokertest.Run(t, brokertest.Harness{
		New: func(t *testing.T) broker.Broker { return broker.NewInMemory() },
	})
}
