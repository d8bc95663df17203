package sandbox

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	v1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
	testns "github.com/aad-pod-identity/aad-pod-identity/internal/testing/netns"
)

// corednsVersion is the Makefile's COREDNS_VERSION: the tools cache
// directory of the binary and the tag of its image.
const corednsVersion = "1.15.0"

// corednsImage is the name kubeadm deploys CoreDNS by; the nodes know the
// offline-built image by it (imageAliases).
const corednsImage = "registry.k8s.io/coredns/coredns:v" + corednsVersion

// ClusterDNSIP is the kube-dns Service's ClusterIP, the kubelets'
// clusterDNS: AKS's address in its default service range.
const ClusterDNSIP = "10.0.0.10"

// corednsPort is where CoreDNS listens in its pod; the Service maps 53 to
// it. A port above 1023 needs no NET_BIND_SERVICE: the image's user 65532
// would get the capability only in its bounding set from containerd, and
// the image carries no file capabilities, so port 53 would need root or a
// sysctl on the pod's namespace.
const corednsPort = 1053

// CoreDNS finds the CoreDNS binary `make coredns` built (COREDNS, else the
// tools cache).
func CoreDNS() (string, error) {
	path := os.Getenv("COREDNS")
	if path == "" {
		home, _ := os.UserHomeDir()
		path = filepath.Join(home, ".cache", "aad-pod-identity", "coredns-"+corednsVersion, "coredns")
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("CoreDNS: %w (run `make coredns`)", err)
	}
	return path, nil
}

// corefile is the cluster DNS's configuration, kubeadm's without forward
// (the sandbox reaches no outside network): cluster.local from the API, and
// the fake cloud's names (hostAliases) to its addresses. Any other name gets
// SERVFAIL from hosts at once (it answers no NXDOMAIN without a SOA).
func (s *Sandbox) corefile() string {
	s.mu.Lock()
	var hosts strings.Builder
	for _, name := range slices.Sorted(maps.Keys(s.hostAliases)) {
		fmt.Fprintf(&hosts, "        %s %s\n", s.hostAliases[name], name)
	}
	s.mu.Unlock()
	return fmt.Sprintf(`.:%d {
    errors
    health {
        lameduck 5s
    }
    ready
    log . {
        class denial error
    }
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    hosts {
%s        fallthrough cluster.local in-addr.arpa ip6.arpa
    }
    prometheus :9153
    cache 30
    loop
    reload
    loadbalance
}
`, corednsPort, hosts.String())
}

// deployClusterDNS deploys CoreDNS as kubeadm does (ServiceAccount,
// system:coredns RBAC, the Corefile's ConfigMap, a Deployment of two in
// kube-system and the kube-dns Service on ClusterDNSIP), unless it is
// deployed already, and waits until every node resolves the fake cloud's
// names through the Service.
func (s *Sandbox) deployClusterDNS(ctx context.Context) error {
	c, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		return err
	}
	const name, ns = "coredns", metav1.NamespaceSystem
	labels := map[string]string{"k8s-app": "kube-dns"}
	meta := metav1.ObjectMeta{Name: name, Namespace: ns}
	create := func(what string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("cluster DNS %s: %w", what, err)
		}
		return nil
	}
	_, err = c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: meta}, metav1.CreateOptions{})
	if err := create("ServiceAccount", err); err != nil {
		return err
	}
	role := metav1.ObjectMeta{Name: "system:coredns"}
	_, err = c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: role, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
	}}, metav1.CreateOptions{})
	if err := create("ClusterRole", err); err != nil {
		return err
	}
	_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: role,
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}}}, metav1.CreateOptions{})
	if err := create("ClusterRoleBinding", err); err != nil {
		return err
	}
	_, err = c.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: meta, Data: map[string]string{"Corefile": s.corefile()}}, metav1.CreateOptions{})
	if err := create("ConfigMap", err); err != nil {
		return err
	}
	_, err = c.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](2), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corednsPod(labels)}}, metav1.CreateOptions{})
	if err := create("Deployment", err); err != nil {
		return err
	}
	port := func(name string, proto corev1.Protocol, port, target int32) corev1.ServicePort {
		return corev1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: intstr.FromInt32(target)}
	}
	_, err = c.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: ns, Labels: labels},
		Spec: corev1.ServiceSpec{ClusterIP: ClusterDNSIP, Selector: labels, Ports: []corev1.ServicePort{
			port("dns", corev1.ProtocolUDP, 53, corednsPort), port("dns-tcp", corev1.ProtocolTCP, 53, corednsPort),
			port("metrics", corev1.ProtocolTCP, 9153, 9153)}}}, metav1.CreateOptions{})
	if err := create("Service", err); err != nil {
		return err
	}
	return s.waitClusterDNS(ctx)
}

// corednsPod is kubeadm's CoreDNS pod, less privilege: no capability (see
// corednsPort). It tolerates NMI's startup taint: it needs no identity, and
// pods need DNS before NMI runs.
func corednsPod(labels map[string]string) corev1.PodTemplateSpec {
	probe := func(path string, port int32) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(port)}},
			PeriodSeconds: 2, TimeoutSeconds: 5, FailureThreshold: 5}
	}
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
		ServiceAccountName: "coredns",
		PriorityClassName:  "system-cluster-critical",
		DNSPolicy:          corev1.DNSDefault,
		Tolerations: []corev1.Toleration{
			{Key: "CriticalAddonsOnly", Operator: corev1.TolerationOpExists},
			{Key: v1.NMINotReadyTaint, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
		},
		Containers: []corev1.Container{{
			Name: "coredns", Image: corednsImage, ImagePullPolicy: corev1.PullIfNotPresent,
			Args: []string{"-conf", "/etc/coredns/Corefile"},
			Ports: []corev1.ContainerPort{
				{Name: "dns", ContainerPort: corednsPort, Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", ContainerPort: corednsPort, Protocol: corev1.ProtocolTCP},
				{Name: "metrics", ContainerPort: 9153, Protocol: corev1.ProtocolTCP},
			},
			LivenessProbe:  probe("/health", 8080),
			ReadinessProbe: probe("/ready", 8181),
			VolumeMounts:   []corev1.VolumeMount{{Name: "config", MountPath: "/etc/coredns", ReadOnly: true}},
			SecurityContext: &corev1.SecurityContext{
				AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true), RunAsNonRoot: ptr.To(true),
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			},
		}},
		Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
			ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"}}}}},
	}}
}

// waitClusterDNS waits until a resolver in every node's namespace gets the
// fake ARM's address for its name from ClusterDNSIP: CoreDNS is serving and
// kube-proxy routes the Service. Without the fake cloud (no ServeAzure),
// the kubernetes Service's name.
func (s *Sandbox) waitClusterDNS(ctx context.Context) error {
	name, want := "kubernetes.default.svc.cluster.local", kubernetesServiceIP
	s.mu.Lock()
	if ip, ok := s.hostAliases[armHost]; ok {
		name, want = armHost, ip
	}
	nodes := s.nodes
	s.mu.Unlock()
	for _, n := range nodes {
		r := n.real
		resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return testns.Dial(ctx, r.netns, network, net.JoinHostPort(ClusterDNSIP, "53"))
		}}
		var last error
		err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			addrs, err := resolver.LookupHost(ctx, name)
			if last = err; err == nil && !slices.Contains(addrs, want) {
				last = fmt.Errorf("%s is %v, want %s", name, addrs, want)
			}
			return last == nil, nil
		})
		if err != nil {
			return fmt.Errorf("cluster DNS from node %s: %w", n.Name, errors.Join(err, last))
		}
	}
	return nil
}
