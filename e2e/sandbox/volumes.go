package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// prepareVolumes materialises the pod's volumes under dir and returns the
// host directory of each by volume name. Service-account tokens come from
// the TokenRequest API, bound to the pod, so components authenticate as
// their own ServiceAccounts.
func prepareVolumes(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, dir string) (map[string]string, error) {
	paths := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		p := filepath.Join(dir, v.Name)
		if v.HostPath != nil {
			if err := hostPath(v.HostPath); err != nil {
				return nil, fmt.Errorf("volume %s: hostPath %s: %w", v.Name, v.HostPath.Path, err)
			}
			paths[v.Name] = v.HostPath.Path
			continue
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, err
		}
		paths[v.Name] = p
		files, err := volumeFiles(ctx, c, pod, v.VolumeSource)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		if err := writeFiles(p, files); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

// writeFiles writes the files that changed, each through a rename, so that
// a container never reads a half-written one.
func writeFiles(dir string, files map[string][]byte) error {
	for name, data := range files {
		f := filepath.Join(dir, name)
		if old, err := os.ReadFile(f); err == nil && bytes.Equal(old, data) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return err
		}
		tmp := filepath.Join(filepath.Dir(f), ".tmp-"+filepath.Base(f))
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, f); err != nil {
			return err
		}
	}
	return nil
}

// refreshVolumes keeps Secret and ConfigMap volumes in step with their
// sources until ctx ends, as the kubelet does: a component that writes its
// own certificate Secret after it started (the webhook's built-in
// certificates) sees the files appear. Projected volumes with a
// service-account token are rewritten with a new token once 80% of its
// lifetime has passed, as the kubelet does, so components running longer
// than an hour keep authenticating. A source that cannot be read keeps the
// last content.
func refreshVolumes(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, paths map[string]string, every time.Duration) {
	renew := map[string]time.Time{}
	for _, v := range pod.Spec.Volumes {
		if ttl := tokenLifetime(v); ttl > 0 {
			renew[v.Name] = time.Now().Add(ttl * 8 / 10)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		for _, v := range pod.Spec.Volumes {
			due, token := renew[v.Name]
			if v.Secret == nil && v.ConfigMap == nil && (!token || time.Now().Before(due)) {
				continue
			}
			files, err := volumeFiles(ctx, c, pod, v.VolumeSource)
			if err != nil || writeFiles(paths[v.Name], files) != nil {
				continue // retried on the next round
			}
			if token {
				renew[v.Name] = time.Now().Add(tokenLifetime(v) * 8 / 10)
			}
		}
	}
}

// tokenLifetime is the lifetime of the service-account token a projected
// volume holds, or 0 without one.
func tokenLifetime(v corev1.Volume) time.Duration {
	if v.Projected == nil {
		return 0
	}
	for _, s := range v.Projected.Sources {
		if s.ServiceAccountToken != nil {
			return time.Duration(ptr.Deref(s.ServiceAccountToken.ExpirationSeconds, defaultTokenSeconds)) * time.Second
		}
	}
	return 0
}

// hostPath prepares or checks a hostPath volume's source by its type, as
// the kubelet does: the *OrCreate types are created when missing (a file
// empty, with its directory), the others must exist as what they say.
func hostPath(v *corev1.HostPathVolumeSource) error {
	t := ptr.Deref(v.Type, corev1.HostPathUnset)
	fi, err := os.Stat(v.Path)
	switch {
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	case t == corev1.HostPathUnset:
		if err != nil {
			// No check; a directory, so that the process finds something.
			return os.MkdirAll(v.Path, 0o755)
		}
		return nil
	case t == corev1.HostPathDirectoryOrCreate && err != nil:
		return os.MkdirAll(v.Path, 0o755)
	case t == corev1.HostPathFileOrCreate && err != nil:
		if err := os.MkdirAll(filepath.Dir(v.Path), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(v.Path, os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return err
		}
		return f.Close()
	case err != nil:
		return fmt.Errorf("%s does not exist", t)
	}
	want := map[corev1.HostPathType]func(fs.FileMode) bool{
		corev1.HostPathDirectory:         fs.FileMode.IsDir,
		corev1.HostPathDirectoryOrCreate: fs.FileMode.IsDir,
		corev1.HostPathFile:              fs.FileMode.IsRegular,
		corev1.HostPathFileOrCreate:      fs.FileMode.IsRegular,
		corev1.HostPathSocket:            func(m fs.FileMode) bool { return m&fs.ModeSocket != 0 },
		corev1.HostPathCharDev:           func(m fs.FileMode) bool { return m&fs.ModeCharDevice != 0 },
		corev1.HostPathBlockDev:          func(m fs.FileMode) bool { return m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0 },
	}[t]
	if want == nil || !want(fi.Mode()) {
		return fmt.Errorf("is %s, not %s", fi.Mode().Type(), t)
	}
	return nil
}

// volumeFiles returns the files of one volume, by path relative to its root.
func volumeFiles(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, src corev1.VolumeSource) (map[string][]byte, error) {
	switch {
	case src.EmptyDir != nil:
		return nil, nil
	case src.Secret != nil:
		return secretFiles(ctx, c, pod.Namespace, src.Secret.SecretName, src.Secret.Items, src.Secret.Optional)
	case src.ConfigMap != nil:
		return configMapFiles(ctx, c, pod.Namespace, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional)
	case src.DownwardAPI != nil:
		return downwardFiles(pod, src.DownwardAPI.Items)
	case src.Projected != nil:
		out := map[string][]byte{}
		for _, s := range src.Projected.Sources {
			files, err := projectedFiles(ctx, c, pod, s)
			if err != nil {
				return nil, err
			}
			for k, v := range files {
				out[k] = v
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("volume type not supported by the sandbox kubelet")
}

func projectedFiles(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, s corev1.VolumeProjection) (map[string][]byte, error) {
	switch {
	case s.ServiceAccountToken != nil:
		tok, err := serviceAccountToken(ctx, c, pod, s.ServiceAccountToken)
		if err != nil {
			return nil, err
		}
		return map[string][]byte{s.ServiceAccountToken.Path: []byte(tok)}, nil
	case s.Secret != nil:
		return secretFiles(ctx, c, pod.Namespace, s.Secret.Name, s.Secret.Items, s.Secret.Optional)
	case s.ConfigMap != nil:
		return configMapFiles(ctx, c, pod.Namespace, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional)
	case s.DownwardAPI != nil:
		return downwardFiles(pod, s.DownwardAPI.Items)
	}
	return nil, fmt.Errorf("projected source not supported by the sandbox kubelet")
}

// defaultTokenSeconds is the lifetime the ServiceAccount admission gives
// the kube-api-access volume's token.
const defaultTokenSeconds = 3607

func serviceAccountToken(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, p *corev1.ServiceAccountTokenProjection) (string, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	var aud []string
	if p.Audience != "" {
		aud = []string{p.Audience}
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         aud,
		ExpirationSeconds: ptr.To(ptr.Deref(p.ExpirationSeconds, defaultTokenSeconds)),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	resp, err := c.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	return resp.Status.Token, nil
}

func secretFiles(ctx context.Context, c kubernetes.Interface, ns, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	s, err := c.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, optionalMissing(err, optional)
	}
	return pick(s.Data, items), nil
}

func configMapFiles(ctx context.Context, c kubernetes.Interface, ns, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	cm, err := c.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, optionalMissing(err, optional)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return pick(data, items), nil
}

// pick applies a volume's items list: only those keys, at those paths.
func pick(data map[string][]byte, items []corev1.KeyToPath) map[string][]byte {
	if len(items) == 0 {
		return data
	}
	out := map[string][]byte{}
	for _, it := range items {
		if v, ok := data[it.Key]; ok {
			out[it.Path] = v
		}
	}
	return out
}

func downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, it := range items {
		if it.FieldRef == nil {
			continue
		}
		v, err := fieldValue(pod, it.FieldRef.FieldPath, pod.Status.PodIP, pod.Status.HostIP)
		if err != nil {
			return nil, err
		}
		out[it.Path] = []byte(v)
	}
	return out, nil
}
