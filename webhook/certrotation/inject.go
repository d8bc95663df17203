package certrotation

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

const (
	// AnnotationCAInjectedAt records on each webhook configuration when the
	// Secret's current CA was added to its caBundle; the CAs it joined are
	// kept until Overlap has passed since.
	AnnotationCAInjectedAt = "aadpodidentity.k8s.io/ca-injected-at"
	// certManagerInjectFrom marks a configuration whose caBundle cert-manager's
	// cainjector owns: the injector leaves it alone.
	certManagerInjectFrom = "cert-manager.io/inject-ca-from"
	// DefaultOverlap outlasts a webhook rollout: new pods are Ready only once
	// the kubelet has delivered the Secret to them (about a minute), and old
	// pods serve the previous CA's certificate until then.
	DefaultOverlap = 10 * time.Minute
)

// injector keeps the Secret's CA in the caBundle of both webhook
// configurations. Unlike a plain replacement it appends the CA to the CAs
// already trusted and drops those only after the overlap, so that webhook
// pods still serving the previous certificate (cert-manager's, before a
// switch to the built-in certificates, or the rotator's previous CA) keep
// answering.
type injector struct {
	reader  client.Reader
	writer  client.Writer
	secret  types.NamespacedName
	name    string
	overlap time.Duration
	now     func() time.Time
}

// addInjector runs the injector on a cache that holds only the Secret and the
// two configurations.
func addInjector(mgr manager.Manager, c Config) error {
	byName := func(name string) fields.Selector { return fields.OneTermEqualSelector("metadata.name", name) }
	objects, err := cache.New(mgr.GetConfig(), cache.Options{
		Scheme: mgr.GetScheme(),
		Mapper: mgr.GetRESTMapper(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Namespaces: map[string]cache.Config{c.Secret.Namespace: {}}, Field: byName(c.Secret.Name)},
			&admissionregistrationv1.MutatingWebhookConfiguration{}:   {Field: byName(c.WebhookConfigurationName)},
			&admissionregistrationv1.ValidatingWebhookConfiguration{}: {Field: byName(c.WebhookConfigurationName)},
		},
	})
	if err != nil {
		return fmt.Errorf("creating the CA injector's cache: %w", err)
	}
	if err := mgr.Add(objects); err != nil {
		return err
	}
	inj := &injector{reader: objects, writer: mgr.GetClient(), secret: c.Secret, name: c.WebhookConfigurationName,
		overlap: c.Overlap, now: time.Now}
	if inj.overlap == 0 {
		inj.overlap = DefaultOverlap
	}
	ctrl, err := controller.NewUnmanaged("webhook-ca-injector", controller.Options{Reconciler: inj, SkipNameValidation: ptr.To(true)})
	if err != nil {
		return err
	}
	// Every event of the three objects reconciles the one request.
	one := func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: c.WebhookConfigurationName}}}
	}
	for _, obj := range []client.Object{&corev1.Secret{}, &admissionregistrationv1.MutatingWebhookConfiguration{}, &admissionregistrationv1.ValidatingWebhookConfiguration{}} {
		if err := ctrl.Watch(source.Kind(objects, obj, handler.EnqueueRequestsFromMapFunc(one))); err != nil {
			return fmt.Errorf("watching %T: %w", obj, err)
		}
	}
	return mgr.Add(ctrl)
}

// Reconcile writes the merged caBundle into both configurations and comes
// back when the CAs it kept are due to be dropped.
func (r *injector) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	secret := &corev1.Secret{}
	if err := r.reader.Get(ctx, r.secret, secret); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	ca := secret.Data["ca.crt"]
	if len(ca) == 0 {
		// The rotator has not filled the Secret yet; its write is an event.
		return reconcile.Result{}, nil
	}
	var next time.Duration
	for _, cfg := range []webhookConfiguration{&mutating{}, &validating{}} {
		after, err := r.inject(ctx, cfg, ca)
		if err != nil {
			return reconcile.Result{}, err
		}
		if after > 0 && (next == 0 || after < next) {
			next = after
		}
	}
	return reconcile.Result{RequeueAfter: next}, nil
}

// inject updates one configuration and says when it needs another look.
func (r *injector) inject(ctx context.Context, cfg webhookConfiguration, ca []byte) (time.Duration, error) {
	logger := log.FromContext(ctx).WithValues("kind", cfg.kind(), "name", r.name)
	var requeue time.Duration
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		obj := cfg.object()
		if err := r.reader.Get(ctx, types.NamespacedName{Name: r.name}, obj); err != nil {
			return client.IgnoreNotFound(err)
		}
		if obj.GetAnnotations()[certManagerInjectFrom] != "" || !obj.GetDeletionTimestamp().IsZero() {
			return nil
		}
		now := r.now()
		injectedAt, _ := time.Parse(time.RFC3339, obj.GetAnnotations()[AnnotationCAInjectedAt])
		changed := false
		for _, bundle := range cfg.bundles() {
			merged, added := mergeBundle(*bundle, ca, injectedAt.Add(r.overlap), now)
			if added {
				injectedAt = now
				merged, _ = mergeBundle(*bundle, ca, now.Add(r.overlap), now)
			}
			if !bytes.Equal(merged, *bundle) {
				*bundle, changed = merged, true
			}
		}
		if keep := injectedAt.Add(r.overlap).Sub(now); keep > 0 {
			requeue = keep
		}
		if !changed {
			return nil
		}
		annotations := obj.GetAnnotations()
		if annotations == nil {
			annotations = map[string]string{}
		}
		annotations[AnnotationCAInjectedAt] = injectedAt.UTC().Format(time.RFC3339)
		obj.SetAnnotations(annotations)
		logger.Info("injecting the webhook CA", "keepPreviousCAsUntil", injectedAt.Add(r.overlap).UTC().Format(time.RFC3339))
		return r.writer.Update(ctx, obj)
	})
	if err != nil {
		return 0, fmt.Errorf("injecting the CA into %s: %w", r.name, err)
	}
	return requeue, nil
}

// mergeBundle returns the caBundle that trusts ca and, until keepUntil, the
// other unexpired CAs of current; added says ca was not trusted yet. Blocks
// that are not certificates are dropped: they trust nothing.
func mergeBundle(current, ca []byte, keepUntil, now time.Time) (merged []byte, added bool) {
	own := certificates(ca)
	if len(own) == 0 {
		return current, false
	}
	added = true
	var others [][]byte
	for _, der := range certificates(current) {
		if containsDER(own, der) {
			added = false
			continue
		}
		if now.Before(keepUntil) && !expired(der, now) && !containsDER(others, der) {
			others = append(others, der)
		}
	}
	var out bytes.Buffer
	for _, der := range append(own, others...) {
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	return out.Bytes(), added
}

func certificates(bundle []byte) [][]byte {
	var ders [][]byte
	for {
		var block *pem.Block
		block, bundle = pem.Decode(bundle)
		if block == nil {
			return ders
		}
		if block.Type == "CERTIFICATE" {
			if _, err := x509.ParseCertificate(block.Bytes); err == nil {
				ders = append(ders, block.Bytes)
			}
		}
	}
}

func containsDER(ders [][]byte, der []byte) bool {
	for _, d := range ders {
		if bytes.Equal(d, der) {
			return true
		}
	}
	return false
}

func expired(der []byte, now time.Time) bool {
	cert, err := x509.ParseCertificate(der)
	return err != nil || now.After(cert.NotAfter)
}

// webhookConfiguration lets the injector treat both kinds alike.
type webhookConfiguration interface {
	kind() string
	object() client.Object
	bundles() []*[]byte
}

type mutating struct {
	admissionregistrationv1.MutatingWebhookConfiguration
}

func (*mutating) kind() string            { return "MutatingWebhookConfiguration" }
func (m *mutating) object() client.Object { return &m.MutatingWebhookConfiguration }
func (m *mutating) bundles() []*[]byte {
	out := make([]*[]byte, len(m.Webhooks))
	for i := range m.Webhooks {
		out[i] = &m.Webhooks[i].ClientConfig.CABundle
	}
	return out
}

type validating struct {
	admissionregistrationv1.ValidatingWebhookConfiguration
}

func (*validating) kind() string            { return "ValidatingWebhookConfiguration" }
func (v *validating) object() client.Object { return &v.ValidatingWebhookConfiguration }
func (v *validating) bundles() []*[]byte {
	out := make([]*[]byte, len(v.Webhooks))
	for i := range v.Webhooks {
		out[i] = &v.Webhooks[i].ClientConfig.CABundle
	}
	return out
}
