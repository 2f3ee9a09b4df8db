#!/usr/bin/env bash
# One nightly incremental run: create a RayJob from $TEMPLATE, wait until KubeRay reports it
# finished, exit 0 only if the Ray job SUCCEEDED. Old nightly RayJobs beyond the newest $KEEP
# are deleted first (their Ray clusters are already gone: shutdownAfterJobFinishes).
# Needs kubectl and RBAC create/get/list/delete on rayjobs (rbac.yaml).
set -euo pipefail
TEMPLATE=${TEMPLATE:-/nightly/rayjob.yaml}
KEEP=${KEEP:-7}
POLL_SECONDS=${POLL_SECONDS:-30}
SELECTOR=app.kubernetes.io/name=multilingual-embed,app.kubernetes.io/component=nightly

old=$(kubectl get rayjobs -l "$SELECTOR" --sort-by=.metadata.creationTimestamp -o name)
count=$(printf '%s\n' "$old" | grep -c . || true)
if [ "$count" -gt "$KEEP" ]; then
  printf '%s\n' "$old" | head -n "$((count - KEEP))" | xargs kubectl delete
fi

name=$(kubectl create -f "$TEMPLATE" -o name)
echo "created $name"
while :; do
  state=$(kubectl get "$name" -o 'jsonpath={.status.jobDeploymentStatus}') || state=unknown  # API hiccup: ask again
  case "$state" in Complete | Failed) break ;; esac
  sleep "$POLL_SECONDS"
done
status=$(kubectl get "$name" -o 'jsonpath={.status.jobStatus}')
echo "$name: deployment $state, job ${status:-unknown}"
[ "$status" = SUCCEEDED ]
