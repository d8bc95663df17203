#!/usr/bin/env bash
# The standard walkthrough (docs/demo.md) on the sandbox
# cluster: helm install of the chart, steps 2-6 with the walkthrough's own
# commands and manifests, the demo pod's log and description, the cleanup,
# and the teardown (also on Ctrl-C). KEEP=1 leaves everything up.
#
# MODE=federated runs it in federated mode (docs/federation.md): the AKS
# steps that give the identity a federated credential for the cluster's
# issuer replace the assigner, and no identity goes on any node pool.
#
# Run through `make demo` (as root); it passes BIN, HELM and KUBEBUILDER_ASSETS.
set -euo pipefail

: "${BIN:?}" "${HELM:?}" "${KUBEBUILDER_ASSETS:?}"
if [[ $EUID -ne 0 ]]; then
	echo "make demo needs root: the sandbox creates network and mount namespaces" >&2
	exit 1
fi
KEEP="${KEEP:-}"
MODE="${MODE:-standard}"
case "$MODE" in
standard | federated) ;;
*) echo "MODE=$MODE: want standard or federated" >&2; exit 2 ;;
esac
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CHART="$ROOT/charts/aad-pod-identity"
# kubectl of the control plane we built, so the walkthrough's commands run as written.
export PATH="$KUBEBUILDER_ASSETS:$PATH"
helm() { "$HELM" "$@"; }

STEPS=12
[[ "$MODE" == federated ]] && STEPS=13
step=0
progress() { step=$((step + 1)); printf '\n==> [%d/%d] %s\n' "$step" "$STEPS" "$*"; }

ID="demo$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')"
DIR="/tmp/aadpi-sbx-$ID"
SANDBOX_PID=""
ok=""

teardown() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n "$KEEP" && -n "$ok" ]]; then
		cat <<EOF

The sandbox $ID is still up (KEEP=1), with the demo's identity, binding and pod:
  export KUBECONFIG=$DIR/kubeconfig PATH=$KUBEBUILDER_ASSETS:\$PATH
  kubectl get pods -A -o wide
  kubectl logs demo
  az() { $BIN/sandbox az --dir $DIR "\$@"; }     # the walkthrough's az commands
Tear it down with:  kill $SANDBOX_PID; rm -rf $DIR     (if that process is gone: make sandbox-down)
EOF
		exit "$rc"
	fi
	if [[ -z "$ok" && -f "$DIR/ready" ]]; then
		echo "==> what the cluster looked like" >&2
		kubectl get pods -A -o wide >&2 || true
		kubectl logs -n kube-system -l app.kubernetes.io/instance=aad-pod-identity --all-containers --prefix --tail=15 >&2 || true
	fi
	if [[ -n "$SANDBOX_PID" ]]; then
		echo "==> tearing down the sandbox $ID"
		kill -TERM "$SANDBOX_PID" 2>/dev/null || true
		# The sandbox kills its processes and removes its namespaces on SIGTERM.
		while kill -0 "$SANDBOX_PID" 2>/dev/null; do sleep 0.2; done
		"$BIN/sandbox" down --id "$ID"
		rm -rf "$DIR"
	fi
	if [[ -z "$ok" ]]; then
		echo "demo failed (exit $rc)" >&2
		[[ $rc -ne 0 ]] || rc=1
	fi
	exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

mkdir -p "$DIR"
progress "building the images offline (webhook, assigner, nmi, demo; pause, kubectl, CoreDNS and a shell for the nodes and the hooks; cert-manager's controller and cainjector)"
"$BIN/sandbox" images --repo "$ROOT" --out "$DIR/images" 2>&1 | tail -n 3
NODES="2 real nodes (kubelet, containerd, runc, CNI bridge)"
progress "starting the sandbox: control plane, $NODES in 2 VMSS pools, fake Azure (ARM, AAD, IMDS per node)"
# Its own session: Ctrl-C reaches this script, whose trap tears the sandbox down in order.
setsid "$BIN/sandbox" up --id "$ID" --dir "$DIR" --ready-file "$DIR/ready" --images "$DIR/images" >"$DIR/sandbox.out" 2>&1 &
SANDBOX_PID=$!
for _ in $(seq 600); do
	[[ -f "$DIR/ready" ]] && break
	kill -0 "$SANDBOX_PID" 2>/dev/null || { cat "$DIR/sandbox.out" >&2; exit 1; }
	sleep 0.5
done
[[ -f "$DIR/ready" ]] || { echo "the sandbox did not come up in 5 minutes; see $DIR/sandbox.out" >&2; exit 1; }
export KUBECONFIG="$DIR/kubeconfig"
# shellcheck source=/dev/null
source "$DIR/azure.env"
kubectl get nodes -o wide

# What the walkthrough's preamble gets from `az login` and `az aks show`.
export SUBSCRIPTION_ID
export IDENTITY_RESOURCE_GROUP="$NODE_RESOURCE_GROUP"
export IDENTITY_NAME="demo"
az() { "$BIN/sandbox" az --dir "$DIR" "$@"; }

# docs/install.md, step 1, with the sandbox's values for the parts of
# cert-manager that cannot be built here (its webhook; docs/sandbox.md).
progress "docs/install.md 1: installing cert-manager with its chart (controller and cainjector built from its Go module)"
helm install cert-manager "$DIR/images/charts/cert-manager" --namespace cert-manager --create-namespace --set crds.enabled=true \
	-f "$DIR/images/cert-manager-values.yaml" --wait --timeout 5m
kubectl -n cert-manager rollout status deployment/cert-manager
kubectl -n cert-manager rollout status deployment/cert-manager-cainjector

# Federated mode: no assigner; NMI exchanges pods' service-account tokens at the fake Azure AD.
mode_values=()
if [[ "$MODE" == federated ]]; then
	mode_values=(--set policy.mode=federated --set-string policy.federation.tenantID="$TENANT_ID" --set-string nmi.aadAuthorityHost="$AAD_AUTHORITY_HOST")
fi
progress "walkthrough 1: deploying aad-pod-identity with helm in $MODE mode (certificates: cert-manager; assigner credentials for the fake Azure)"
helm install aad-pod-identity "$CHART" --namespace=kube-system "${mode_values[@]}" \
	--set assigner.azure.source=secret \
	--set-string assigner.azure.tenantID="$TENANT_ID" \
	--set-string assigner.azure.subscriptionID="$SUBSCRIPTION_ID" \
	--set-string assigner.azure.resourceGroup="$NODE_RESOURCE_GROUP" \
	--set-string assigner.azure.clientID="$AZURE_CLIENT_ID" \
	--set-string assigner.azure.clientSecret="$AZURE_CLIENT_SECRET" \
	--set-string assigner.armEndpoint="$ARM_ENDPOINT" \
	--set-string assigner.aadAuthorityHost="$AAD_AUTHORITY_HOST" \
	--set-string nodeIdentity.cloudConfig="$CLOUD_CONFIG" \
	--set-string nmi.criSocket="$CRI_SOCKET" \
	--wait --timeout 3m
kubectl get pods -n kube-system -o wide

progress "walkthrough 2: creating an identity on Azure and assigning it the Reader role"
az identity create -g ${IDENTITY_RESOURCE_GROUP} -n ${IDENTITY_NAME}
export IDENTITY_CLIENT_ID="$(az identity show -g ${IDENTITY_RESOURCE_GROUP} -n ${IDENTITY_NAME} --query clientId -otsv)"
export IDENTITY_RESOURCE_ID="$(az identity show -g ${IDENTITY_RESOURCE_GROUP} -n ${IDENTITY_NAME} --query id -otsv)"
export IDENTITY_ASSIGNMENT_ID="$(az role assignment create --role Reader --assignee ${IDENTITY_CLIENT_ID} --scope /subscriptions/${SUBSCRIPTION_ID}/resourceGroups/${IDENTITY_RESOURCE_GROUP} --query id -otsv)"

if [[ "$MODE" == federated ]]; then
	progress "docs/federation.md: the cluster's OIDC issuer and the identity's federated credential for the demo pod's service account"
	az aks update -g "$NODE_RESOURCE_GROUP" -n sandbox --enable-oidc-issuer >/dev/null
	export AKS_OIDC_ISSUER="$(az aks show -g "$NODE_RESOURCE_GROUP" -n sandbox --query oidcIssuerProfile.issuerUrl -otsv)"
	az identity federated-credential create --name demo-federated --identity-name ${IDENTITY_NAME} --resource-group ${IDENTITY_RESOURCE_GROUP} \
		--issuer "${AKS_OIDC_ISSUER}" --subject system:serviceaccount:default:default --audiences api://AzureADTokenExchange
fi

progress "walkthrough 3: deploying the AzureIdentity"
cat <<EOF | kubectl apply -f -
apiVersion: "aadpodidentity.k8s.io/v1"
kind: AzureIdentity
metadata:
  name: ${IDENTITY_NAME}
spec:
  type: 0
  resourceID: ${IDENTITY_RESOURCE_ID}
  clientID: ${IDENTITY_CLIENT_ID}
EOF

progress "walkthrough 4: (optional) matching pods in the namespace: skipped, as in the walkthrough"

progress "walkthrough 5: deploying the AzureIdentityBinding"
cat <<EOF | kubectl apply -f -
apiVersion: "aadpodidentity.k8s.io/v1"
kind: AzureIdentityBinding
metadata:
  name: ${IDENTITY_NAME}-binding
spec:
  azureIdentity: ${IDENTITY_NAME}
  selector: ${IDENTITY_NAME}
EOF

progress "walkthrough 6: deploying the demo pod and waiting for its token through NMI"
cat << EOF | kubectl apply -f -
apiVersion: v1
kind: Pod
metadata:
  name: demo
  labels:
    aadpodidbinding: $IDENTITY_NAME
spec:
  containers:
  - name: demo
    image: mcr.microsoft.com/oss/azure/aad-pod-identity/demo:v1.7.5
    args:
      - --subscription-id=${SUBSCRIPTION_ID}
      - --resource-group=${IDENTITY_RESOURCE_GROUP}
      - --identity-client-id=${IDENTITY_CLIENT_ID}
    env:
      - name: MY_POD_NAME
        valueFrom:
          fieldRef:
            fieldPath: metadata.name
      - name: MY_POD_NAMESPACE
        valueFrom:
          fieldRef:
            fieldPath: metadata.namespace
      - name: MY_POD_IP
        valueFrom:
          fieldRef:
            fieldPath: status.podIP
  nodeSelector:
    kubernetes.io/os: linux
EOF
want="successfully acquired a service principal token using a user-assigned identity"
for _ in $(seq 180); do
	kubectl logs demo 2>/dev/null | grep -q "$want" && break
	sleep 1
done

progress "kubectl logs demo"
kubectl logs demo
kubectl logs demo | grep -q "$want" || { echo "the demo pod did not get a token with the user-assigned identity in 3 minutes" >&2; exit 1; }
if [[ "$MODE" == federated ]]; then
	echo
	echo "\$ kubectl get azureassignedidentities -A     # federated: nothing is assigned to any node pool"
	kubectl get azureassignedidentities -A
	[[ -z "$(kubectl get azureassignedidentities -A -o name)" ]] || { echo "federated mode assigned identities to node pools" >&2; exit 1; }
	pools=$(kubectl get nodes -o jsonpath='{range .items[*]}{.spec.providerID}{"\n"}{end}' | sed -n 's|.*/virtualMachineScaleSets/\([^/]*\)/.*|\1|p' | sort -u)
	for pool in $pools; do
		echo "\$ az vmss identity show -g $NODE_RESOURCE_GROUP -n $pool"
		az vmss identity show -g "$NODE_RESOURCE_GROUP" -n "$pool" | tee "$DIR/vmss-identity.json"
		! grep -qi "$IDENTITY_RESOURCE_ID" "$DIR/vmss-identity.json" || { echo "federated mode put the identity on VMSS $pool" >&2; exit 1; }
	done
fi

progress "kubectl describe pod demo"
kubectl describe pod demo
echo
echo "\$ kubectl get certificate -n kube-system"
kubectl get certificate -n kube-system
kubectl wait -n kube-system certificate --all --for=condition=Ready --timeout=10s >/dev/null

if [[ -n "$KEEP" ]]; then
	ok=1
	exit 0
fi
progress "cleaning up the walkthrough's resources"
kubectl delete pod demo
kubectl delete azureidentity ${IDENTITY_NAME}
kubectl delete azureidentitybinding ${IDENTITY_NAME}-binding
az role assignment delete --id ${IDENTITY_ASSIGNMENT_ID}
[[ "$MODE" != federated ]] || az identity federated-credential delete --name demo-federated --identity-name ${IDENTITY_NAME} --resource-group ${IDENTITY_RESOURCE_GROUP} --yes
az identity delete -g ${IDENTITY_RESOURCE_GROUP} -n ${IDENTITY_NAME}
ok=1
