package assigner_test

import (
	"os"
	"testing"

	"go.uber.org/zap/zapcore"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/aad-pod-identity/aad-pod-identity/internal/testing/framework"
)

func TestMain(m *testing.M) {
	logf.SetLogger(zap.New(zap.UseDevMode(true), zap.Level(zapLevel()), func(o *zap.Options) { o.TimeEncoder = zapcore.RFC3339NanoTimeEncoder }))
	os.Exit(framework.Run(m))
}

func zapLevel() zapcore.Level {
	if os.Getenv("ASSIGNER_TEST_LOGS") != "" {
		return -1
	}
	return 2 // errors only
}
