package sandbox

import (
	"context"
	"fmt"
	"regexp"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// containerEnv resolves a container's environment as the kubelet does:
// envFrom first, then env in order (values may refer to earlier ones with
// $(NAME)), downward-API fields including the pod IP, Secret and ConfigMap
// keys read through the API.
func containerEnv(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, ctr *corev1.Container, podIP, hostIP string) (map[string]string, error) {
	env := map[string]string{}
	for _, from := range ctr.EnvFrom {
		data, err := envSource(ctx, c, pod.Namespace, from)
		if err != nil {
			return nil, err
		}
		for k, v := range data {
			env[from.Prefix+k] = v
		}
	}
	for _, e := range ctr.Env {
		if e.ValueFrom == nil {
			env[e.Name] = expand(e.Value, env)
			continue
		}
		v, err := envValueFrom(ctx, c, pod, e.ValueFrom, podIP, hostIP)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		env[e.Name] = v
	}
	return env, nil
}

func envSource(ctx context.Context, c kubernetes.Interface, ns string, from corev1.EnvFromSource) (map[string]string, error) {
	switch {
	case from.ConfigMapRef != nil:
		cm, err := c.CoreV1().ConfigMaps(ns).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
		if err != nil {
			return nil, optionalMissing(err, from.ConfigMapRef.Optional)
		}
		return cm.Data, nil
	case from.SecretRef != nil:
		s, err := c.CoreV1().Secrets(ns).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
		if err != nil {
			return nil, optionalMissing(err, from.SecretRef.Optional)
		}
		out := map[string]string{}
		for k, v := range s.Data {
			out[k] = string(v)
		}
		return out, nil
	}
	return nil, nil
}

func envValueFrom(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, from *corev1.EnvVarSource, podIP, hostIP string) (string, error) {
	switch {
	case from.FieldRef != nil:
		return fieldValue(pod, from.FieldRef.FieldPath, podIP, hostIP)
	case from.SecretKeyRef != nil:
		s, err := c.CoreV1().Secrets(pod.Namespace).Get(ctx, from.SecretKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", optionalMissing(err, from.SecretKeyRef.Optional)
		}
		return string(s.Data[from.SecretKeyRef.Key]), nil
	case from.ConfigMapKeyRef != nil:
		cm, err := c.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", optionalMissing(err, from.ConfigMapKeyRef.Optional)
		}
		return cm.Data[from.ConfigMapKeyRef.Key], nil
	case from.ResourceFieldRef != nil:
		// The sandbox enforces no resources; report "0" as a node without limits would.
		return "0", nil
	}
	return "", fmt.Errorf("unsupported env source")
}

func optionalMissing(err error, optional *bool) error {
	if optional != nil && *optional {
		return nil
	}
	return err
}

// fieldValue answers a downward-API field path.
func fieldValue(pod *corev1.Pod, path, podIP, hostIP string) (string, error) {
	if m := subscript.FindStringSubmatch(path); m != nil {
		src := pod.Labels
		if m[1] == "annotations" {
			src = pod.Annotations
		}
		return src[m[2]], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return podIP, nil
	case "status.hostIP", "status.hostIPs":
		return hostIP, nil
	}
	return "", fmt.Errorf("unsupported fieldPath %q", path)
}

var subscript = regexp.MustCompile(`^metadata\.(labels|annotations)\['([^']+)'\]$`)

// formatMap renders labels or annotations the way the kubelet's downward-API
// files do: sorted key="value" lines.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := ""
	for _, k := range keys {
		out += fmt.Sprintf("%s=%q\n", k, m[k])
	}
	return out
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)`)

// expand replaces $(NAME) with known values and leaves unknown ones as they
// are, like the kubelet.
func expand(s string, env map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(ref string) string {
		if v, ok := env[ref[2:len(ref)-1]]; ok {
			return v
		}
		return ref
	})
}
