package validate

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, natstest.LeakOptions()...) }
