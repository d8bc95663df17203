package webhook

import (
	"flag"
	"os"
	"testing"

	"github.com/go-logr/logr"
	"go.uber.org/zap/zapcore"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

func TestMain(m *testing.M) {
	flag.Parse()
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true), zap.Level(zapLevel())))
	// Fuzzing logs nothing: the errors it provokes on purpose would slow it
	// down.
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		logf.SetLogger(logr.Discard())
	}
	os.Exit(framework.Run(m))
}

// zapLevel keeps test output to errors unless TEST_VERBOSE_LOGS is set.
func zapLevel() zapcore.Level {
	if os.Getenv("TEST_VERBOSE_LOGS") != "" {
		return zapcore.DebugLevel
	}
	return zapcore.ErrorLevel
}
