#!/usr/bin/env bash
# Builds the CPU image of deploy/Containerfile.cpu on this machine kind and smoke-tests it: C-ECHO and one
# CT study through the image's own `ctnode serve` (receiver + worker + delivery), results into a storescp.
#
# No registry is reachable here, so the Debian 12 base is made from Debian packages (mmdebstrap); torch comes
# from the local wheel folder and pip trusts the host's CA bundle. The default OCI runtime cannot start
# containers on this machine kind (crun: cgroups in hybrid mode; setrlimit refused), so the build uses
# buildah's chroot isolation and the smoke test runs the image's entrypoint the same way (`buildah run`),
# as the image's user, with the host network. Needs: podman buildah mmdebstrap dcmtk (apt).
# Usage: .ci/image-smoke.sh   (env: CTNODE_IMAGE, CTNODE_BASE_IMAGE, CTNODE_SMOKE_DATA; CTNODE_SMOKE_BUILD=0 tests
# an image already built)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
image=${CTNODE_IMAGE:-localhost/ctnode:cpu}
base=${CTNODE_BASE_IMAGE:-localhost/ctnode-base:bookworm}
data=${CTNODE_SMOKE_DATA:-$repo/../shared/ct/chest_lung_pet_ct_dx_A0001/series_5mm_lung_kernel}
work=$(mktemp -d /tmp/ctnode-image-smoke.XXXXXX)
container=""
descendants() { local child; for child in $(ps -o pid= --ppid "$1"); do echo "$child"; descendants "$child"; done; }
# SIGTERM to the image's init (tini; buildah run makes no PID namespace), which passes it on to `ctnode serve`;
# buildah run then returns serve's exit status (0: a clean shutdown).
stop_node() {
  local pid init="" status=0
  for pid in $(descendants "$node_pid"); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = tini ] && init=$pid && break
  done
  if [ -n "$init" ]; then kill -TERM "$init"; else kill -TERM "$node_pid"; fi
  wait "$node_pid" || status=$?
  node_pid=""
  return "$status"
}
cleanup() {
  if [ -n "${node_pid:-}" ]; then stop_node || true; fi
  if [ -n "${scp_pid:-}" ]; then kill "$scp_pid" 2>/dev/null || true; fi
  if [ -n "$container" ]; then buildah rm "$container" >/dev/null 2>&1 || true; fi
  # never remove through a mount left behind (a bind mount of /dev/shm would empty the host's)
  if ! grep -q " $work" /proc/mounts; then rm -rf --one-file-system "$work"; fi
}
trap cleanup EXIT
start=$(date +%s)

if ! podman image exists "$base"; then
  mmdebstrap --variant=minbase --include=ca-certificates bookworm "$work/base.tar" http://deb.debian.org/debian
  podman import "$work/base.tar" "$base"
  rm "$work/base.tar"
fi
cd "$repo"
if [ "${CTNODE_SMOKE_BUILD:-1}" != 0 ]; then
# docker format: the OCI image format has no HEALTHCHECK
podman build --format docker --isolation=chroot --network host -f deploy/Containerfile.cpu -t "$image" \
  --build-arg BASE_IMAGE="$base" \
  --build-arg PIP_EXTRA_INDEX_URL= --build-arg PIP_FIND_LINKS=/opt/wheels -v /opt/wheels:/opt/wheels:ro \
  --build-arg PIP_CERT=/run/host-ca.crt -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro .
fi
echo "image-smoke: built $image in $(( $(date +%s) - start )) s, $(podman image inspect "$image" --format '{{.Size}}') bytes"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dicom_port=$(free_port); metrics_port=$(free_port); pacs_port=$(free_port)
mkdir -p "$work/pacs" "$work/data"
storescp --fork -aet PACS -od "$work/pacs" "$pacs_port" > "$work/storescp.log" 2>&1 &
scp_pid=$!

container=$(buildah from "$image")
user=$(podman image inspect "$image" --format '{{.Config.User}}')
run_in() {  # the image's environment, user and entrypoint, on the host network, chroot isolation
  buildah run --isolation=chroot --network host --user "$user" -v "$work/data:/var/lib/ctnode" \
    --env CTNODE_DICOM__PORT="$dicom_port" --env CTNODE_METRICS__PORT="$metrics_port" \
    --env CTNODE_DICOM__ALLOWED='[{"ae_title": "STORESCU", "host": "127.0.0.1"}, {"ae_title": "ECHOSCU", "host": "127.0.0.1"}]' \
    --env CTNODE_DELIVERY__DESTINATIONS="[{\"name\": \"pacs\", \"ae_title\": \"PACS\", \"host\": \"127.0.0.1\", \"port\": $pacs_port}]" \
    --env CTNODE_DELIVERY__DEFAULT_DESTINATIONS='["pacs"]' --env CTNODE_PIPELINE__QUIET_S=5 \
    --env CTNODE_STORAGE__MIN_FREE_BYTES=0 \
    "$container" -- "$@"
}
chown 10001:10001 "$work/data"
entrypoint=$(podman image inspect "$image" --format '{{join .Config.Entrypoint " "}} {{join .Config.Cmd " "}}')
# shellcheck disable=SC2086  # the image's entrypoint and command, word by word
run_in $entrypoint > "$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 300); do
  run_in /usr/bin/python3 /opt/ctnode/healthcheck.py > /dev/null 2>&1 && break
  kill -0 "$node_pid" 2>/dev/null || { tail -n 40 "$work/node.log"; echo "image-smoke: the node exited"; exit 1; }
  sleep 1
done
run_in /usr/bin/python3 /opt/ctnode/healthcheck.py
echo "image-smoke: HEALTHCHECK passes"
echoscu -aet ECHOSCU -aec CTNODE 127.0.0.1 "$dicom_port"
echo "image-smoke: C-ECHO answered"
storescu -aet STORESCU -aec CTNODE +sd +r 127.0.0.1 "$dicom_port" "$data"
echo "image-smoke: study sent ($(find "$data" -name '*.dcm' | wc -l) files)"
for _ in $(seq 600); do
  sr=$(grep -rl --include='*' -a "1.2.840.10008.5.1.4.1.1.88.34" "$work/pacs" 2>/dev/null | head -n 1 || true)
  [ -n "$sr" ] && break
  kill -0 "$node_pid" 2>/dev/null || { tail -n 40 "$work/node.log"; echo "image-smoke: the node exited"; exit 1; }
  sleep 1
done
[ -n "$sr" ] || { tail -n 40 "$work/node.log"; echo "image-smoke: no SR came back"; exit 1; }
echo "image-smoke: SR delivered: $(basename "$sr")"
status=0; stop_node || status=$?
[ "$status" -eq 0 ] || { tail -n 20 "$work/node.log"; echo "image-smoke: serve exited with $status on SIGTERM"; exit 1; }
echo "image-smoke: serve stopped cleanly on SIGTERM"
echo "image-smoke: passed in $(( $(date +%s) - start )) s"
