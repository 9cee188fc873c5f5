#!/usr/bin/env bash
# Validates deploy/: the compose file (docker compose / docker-compose `config`), the
# Kubernetes manifests (kubernetes-validate --strict against the API schemas, and the
# ServiceMonitor against the Service it scrapes), the systemd unit (systemd-analyze verify
# where systemd runs, else its hardening keys), and, where a Docker engine answers, the
# image build and a 3-node compose smoke test. What cannot run here is said, not skipped
# silently.
set -euo pipefail
cd "$(dirname "$0")/.."
export NEXUS_CLUSTER_SECRET=check-only NEXUS_ROOT_PASSWORD=check-only
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  compose=()
fi
if [ ${#compose[@]} -gt 0 ]; then
  "${compose[@]}" -f deploy/docker-compose.yml config -q && echo "compose: valid"
else
  echo "compose: not checked (no docker compose here: apt-get install docker-compose)"
fi
# Whatever the tool, the file itself: a build, both secrets required, loopback by default.
python3 - <<'PY'
import re, sys
text = open("deploy/docker-compose.yml").read()
checks = {
    "build its image": "build:" in text and "dockerfile: deploy/Dockerfile" in text,
    "require the root password": "${NEXUS_ROOT_PASSWORD:?" in text,
    "require the cluster secret": "${NEXUS_CLUSTER_SECRET:?" in text,
    "publish on 127.0.0.1 by default": all(
        p.startswith('"${NEXUS_PUBLISH:-127.0.0.1}:')
        for p in re.findall(r'^\s+- ("[^"]*:\d+:\d+")$', text, re.M)
    ) and len(re.findall(r'NEXUS_PUBLISH:-127.0.0.1', text)) == 9,
}
bad = [k for k, ok in checks.items() if not ok]
if bad:
    sys.exit("compose: " + "; ".join("does not " + b for b in bad))
print("compose: builds, requires both secrets, publishes on 127.0.0.1")
PY

venv="${CARGO_TARGET_DIR:-$HOME/.cache/nexus-rs/target}/kube-venv"
[ -x "$venv/bin/kubernetes-validate" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q kubernetes-validate; }
"$venv/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/nexus.yaml && echo "kubernetes: valid"
"$venv/bin/python" - <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open("deploy/kubernetes/nexus.yaml")) if d]
kinds = {d["kind"]: d for d in docs}
sts = kinds["StatefulSet"]["spec"]["template"]["spec"]
c = sts["containers"][0]
problems = []
if ":" not in c["image"] or c["image"].endswith(":latest"):
    problems.append("the image needs a versioned tag")
if c.get("imagePullPolicy") != "IfNotPresent":
    problems.append("imagePullPolicy must be IfNotPresent")
if "limits" not in c.get("resources", {}) or "requests" not in c.get("resources", {}):
    problems.append("resources need requests and limits")
if not sts.get("topologySpreadConstraints") and not sts.get("affinity", {}).get("podAntiAffinity"):
    problems.append("pods need spreading (topology spread or anti-affinity)")
pdb = kinds.get("PodDisruptionBudget")
if not pdb or pdb["spec"].get("maxUnavailable") != 1:
    problems.append("a PodDisruptionBudget with maxUnavailable 1 is missing")
sm = yaml.safe_load(open("deploy/kubernetes/servicemonitor.yaml"))
ports = {p["name"] for d in docs if d["kind"] == "Service" for p in d["spec"]["ports"]}
if sm["kind"] != "ServiceMonitor" or any(e["port"] not in ports for e in sm["spec"]["endpoints"]):
    problems.append("the ServiceMonitor must scrape a named port of a Service")
if problems:
    sys.exit("kubernetes: " + "; ".join(problems))
print("kubernetes: versioned image, IfNotPresent, resources, spread, PDB, ServiceMonitor")
PY

if command -v systemd-analyze >/dev/null && [ -d /run/systemd/system ]; then
  systemd-analyze verify deploy/nexus.service && echo "systemd unit: valid"
else
  echo "systemd unit: not verified (no running systemd here); hardening keys checked below"
fi
for key in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
           CapabilityBoundingSet= SystemCallFilter=@system-service; do
  grep -qx "$key" deploy/nexus.service || { echo "systemd unit: $key missing" >&2; exit 1; }
done
grep -q '^u nexus ' deploy/nexus.sysusers || { echo "systemd: deploy/nexus.sysusers creates no user nexus" >&2; exit 1; }
echo "systemd unit: hardened, its user created by deploy/nexus.sysusers"

if docker info >/dev/null 2>&1 && [ ${#compose[@]} -gt 0 ]; then
  ./scripts/compose-smoke.sh "${compose[@]}"
else
  echo "image and 3-node compose smoke test: not run (no Docker engine here)"
fi
