#!/usr/bin/env bash
# Validates what can be validated without a container engine: the compose file (with
# docker-compose's `config`), the Kubernetes manifests (kubernetes-validate, against the
# API schemas), the systemd unit (systemd-analyze verify, where systemd runs), and the
# image build where a Docker engine answers.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v docker-compose >/dev/null; then
  NEXUS_CLUSTER_SECRET=check docker-compose -f deploy/docker-compose.yml config -q && echo "compose: valid"
else
  echo "compose: skipped (apt-get install docker-compose)"
fi
venv="${CARGO_TARGET_DIR:-$HOME/.cache/nexus-rs/target}/kube-venv"
[ -x "$venv/bin/kubernetes-validate" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q kubernetes-validate; }
"$venv/bin/kubernetes-validate" deploy/kubernetes/nexus.yaml
if command -v systemd-analyze >/dev/null && [ -d /run/systemd/system ]; then
  systemd-analyze verify deploy/nexus.service && echo "systemd unit: valid"
else
  echo "systemd unit: skipped (no running systemd)"
fi
if docker info >/dev/null 2>&1; then
  docker build -f deploy/Dockerfile -t nexus-rs . && echo "image: built"
else
  echo "image: skipped (no Docker engine here)"
fi
