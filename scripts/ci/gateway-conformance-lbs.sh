#!/usr/bin/env bash
# Prints one lb Deployment and one LoadBalancer Service per Gateway that the
# Gateway API conformance suite's core GATEWAY-HTTP tests (v1.6.1) create, for
# the workflow job gateway-conformance (.github/workflows/kind.yml). roundhouse
# serves the Gateways it programs on its own listeners, so Gateways that
# share port 80 are isolated by running one lb each (docs/gateway-api.md,
# "Listener ports"); each lb reads its Service's load-balancer address
# (--gateway-service) and writes it to its Gateway's status.
set -euo pipefail

infra=gateway-conformance-infra
gateways=(
  same-namespace same-namespace-with-https-listener all-namespaces backend-namespaces
  gateway-add-listener gateway-remove-listener gateway-observed-generation-bump
  gateway-certificate-malformed-secret gateway-certificate-nonexistent-secret
  gateway-certificate-unsupported-group gateway-certificate-unsupported-kind
  gateway-invalid-parameters-ref gateway-only-invalid-route-kind
  gateway-supported-and-invalid-route-kind gateway-only-unsupported-protocols
  gateway-supported-and-unsupported-protocols gateway-secret-invalid-reference-grant
  gateway-secret-missing-reference-grant gateway-secret-reference-grant-all-in-namespace
  gateway-secret-reference-grant-specific gateway-with-one-attached-route
  gateway-with-two-attached-routes unresolved-gateway-with-one-attached-unresolved-route
  httproute-hostname-intersection httproute-hostname-intersection-all
  httproute-listener-hostname-matching
)

i=0
for gw in "${gateways[@]}"; do
  i=$((i + 1))
  name="lb-gw-$i"
  cat <<YAML
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $name
  namespace: roundhouse
  labels: {app.kubernetes.io/name: lb, app.kubernetes.io/part-of: roundhouse, app.kubernetes.io/instance: $name}
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/instance: $name}
  template:
    metadata:
      labels: {app.kubernetes.io/name: lb, app.kubernetes.io/part-of: roundhouse, app.kubernetes.io/instance: $name}
    spec:
      serviceAccountName: lb
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: lb
        image: roundhouse/lb:0.1.0
        imagePullPolicy: Never
        args: ["serve", "--kubernetes", "--gateway-api", "--gateway", "$infra/$gw", "--gateway-service", "$name", "--workers", "1"]
        env:
        - {name: LB_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: LB_LISTEN, value: "0.0.0.0:8080"}
        - {name: LB_TLS_LISTEN, value: "0.0.0.0:8443"}
        - {name: LB_ADMIN_LISTEN, value: "0.0.0.0:9090"}
        ports:
        - {name: http, containerPort: 8080}
        - {name: https, containerPort: 8443}
        - {name: admin, containerPort: 9090}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata:
  name: $name
  namespace: roundhouse
spec:
  type: LoadBalancer
  selector: {app.kubernetes.io/instance: $name}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: https, port: 443, targetPort: https}
YAML
done
