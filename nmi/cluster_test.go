package nmi

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
)

// A cached pod keeps what the caller's trust rule and the policy read, and
// loses its containers and their statuses.
func TestTrimPod(t *testing.T) {
	started := metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	meta := metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u", Labels: map[string]string{"aadpodidbinding": "s"}, Annotations: map[string]string{"a": "b"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}}
	spec := corev1.PodSpec{NodeName: "n", HostNetwork: true, ServiceAccountName: "sa", SchedulingGates: []corev1.PodSchedulingGate{{Name: "g"}}}
	status := corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}}, StartTime: &started,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	full := &corev1.Pod{ObjectMeta: *meta.DeepCopy(), Spec: *spec.DeepCopy(), Status: *status.DeepCopy()}
	full.Spec.Containers = []corev1.Container{{Name: "c", Image: "i"}}
	full.Spec.Volumes = []corev1.Volume{{Name: "v"}}
	full.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c"}}

	got, err := trimPod(full)
	if err != nil {
		t.Fatal(err)
	}
	meta.ManagedFields = nil
	want := &corev1.Pod{ObjectMeta: meta, Spec: spec, Status: status}
	if !equality.Semantic.DeepEqual(got, want) {
		t.Errorf("trimmed pod\n%+v\nwant\n%+v", got, want)
	}
	tombstone := "not a pod"
	if got, err := trimPod(tombstone); err != nil || got != tombstone {
		t.Errorf("trimPod(%q) = %v, %v; want it unchanged", tombstone, got, err)
	}
}

func TestProbeHandler(t *testing.T) {
	var ready bool
	h := probeHandler(map[string]healthz.Checker{"interception": func(*http.Request) error {
		if !ready {
			return errors.New("not ready")
		}
		return nil
	}})
	for _, tc := range []struct {
		path  string
		ready bool
		want  int
	}{
		{"/healthz", false, http.StatusOK},
		{"/healthz/ping", false, http.StatusOK},
		{"/readyz", false, http.StatusInternalServerError},
		{"/readyz/interception", false, http.StatusInternalServerError},
		{"/readyz", true, http.StatusOK},
		{"/readyz/interception", true, http.StatusOK},
		{"/readyz/other", true, http.StatusNotFound},
	} {
		ready = tc.ready
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if rec.Code != tc.want {
			t.Errorf("GET %s (ready %v): %d, want %d", tc.path, tc.ready, rec.Code, tc.want)
		}
	}
}
