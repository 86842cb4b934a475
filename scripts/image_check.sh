#!/usr/bin/env bash
# `make image-check`: build the Dockerfile with podman, then load what the image ships, in it.
#
# Not part of `make test` (a build takes minutes and needs root). Where the registry's
# python:3.11-slim cannot be pulled, the base the Dockerfile names is stood in for by a minimal
# Debian bookworm made with debootstrap (Debian's python3, which is 3.11, with pip and venv), tagged
# docker.io/library/python:3.11-slim. Running a container may be refused (no setrlimit in a
# sandbox), so the built image's filesystem is mounted and its Python run under chroot, as the
# image's user (10001), with the image's environment: the system libraries it loads, every native
# file of its wheels resolved by ldd, libmagic with its database, neonize's Go library, ffmpeg,
# `wmq migrate` against a PostgreSQL on 127.0.0.1, `wmq api` and `wmq worker` started, and
# `wmq healthcheck` of each (the worker's with WHATSAPP_TRANSPORT=neonize, which loads neonize).
#
# Settings (environment): IMAGE_CHECK_MIRROR (Debian mirror for debootstrap), IMAGE_CHECK_REBASE=1
# (make the stand-in base again), IMAGE_CHECK_PULL=1 (pull the registry's base instead),
# IMAGE_CHECK_DOCKERFILE (another Dockerfile, same context: e.g. to see a broken one fail),
# IMAGE_CHECK_KEEP=1 (keep the built image, localhost/wmq:image-check, and the stand-in base, which
# is otherwise removed: under the real base's name it would mislead any later podman build here).
# The build's RUN steps get this machine's CA bundle (a TLS-inspecting proxy to PyPI needs it):
# IMAGE_CHECK_HOST_CA=0 not to.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=docker.io/library/python:3.11-slim
IMAGE=localhost/wmq:image-check
MIRROR=${IMAGE_CHECK_MIRROR:-http://deb.debian.org/debian}
DOCKERFILE=${IMAGE_CHECK_DOCKERFILE:-$ROOT/Dockerfile}
VENV_PYTHON=$ROOT/.venv/bin/python
WORK=$(mktemp -d /tmp/wmq-image-check.XXXXXX)
chmod 755 "$WORK"
START=$SECONDS
CID="" MNT="" PG_DATA="" PIDS=()

step() { printf '\n== %s (%ds)\n' "$*" "$((SECONDS - START))"; }
ok() { printf '   ok: %s\n' "$*"; }
fail() { printf '\nIMAGE CHECK FAILED: %s\n' "$*" >&2; exit 1; }

cleanup() {
    trap - ERR
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$MNT" ]; then  # anything still running in the image's filesystem is ours: end it
        for proc in /proc/[0-9]*; do
            if [ "$(readlink "$proc/root" 2>/dev/null)" = "$MNT" ]; then kill -KILL "${proc#/proc/}" 2>/dev/null || true; fi
        done
        sleep 1
    fi
    if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        runuser -u nobody -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [ -n "$MNT" ]; then
        umount "$MNT/proc" 2>/dev/null || true
        umount "$MNT/dev" 2>/dev/null || true
    fi
    if [ -n "$CID" ]; then
        podman umount "$CID" >/dev/null 2>&1 || true
        podman rm -f "$CID" >/dev/null 2>&1 || true
    fi
    if [ "${IMAGE_CHECK_KEEP:-0}" != 1 ]; then
        podman rmi "$IMAGE" >/dev/null 2>&1 || true
        # The stand-in carries the real base's name: left behind, a later podman build of any
        # Dockerfile on this machine would take it for python:3.11-slim.
        if [ "$(podman image inspect --format '{{index .Config.Labels "wmq.image-check.base"}}' "$BASE" 2>/dev/null)" \
                = debootstrap ]; then
            podman rmi "$BASE" >/dev/null 2>&1 || true
        fi
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'fail "line $LINENO: $BASH_COMMAND"' ERR

free_port() { "$VENV_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, podman's storage, mount and chroot need it)"
[ -x "$VENV_PYTHON" ] || fail "no $VENV_PYTHON: run \`make install\` (the check's PostgreSQL is pgserver's)"

step "tools"
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || fail "podman and debootstrap are needed (Debian: apt-get install podman debootstrap)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap >/dev/null
fi
ok "$(podman --version), debootstrap $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null || echo '?')"

step "the base image, $BASE"
if [ "${IMAGE_CHECK_PULL:-0}" = 1 ]; then
    podman pull "$BASE" || fail "could not pull $BASE"
fi
if [ "${IMAGE_CHECK_REBASE:-0}" = 1 ]; then podman rmi -f "$BASE" >/dev/null 2>&1 || true; fi
if ! podman image exists "$BASE"; then
    echo "   making a stand-in with debootstrap from $MIRROR (bookworm, minbase + python3, pip, venv)"
    if ! debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates,netbase \
            bookworm "$WORK/base" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 20 "$WORK/debootstrap.log" >&2
        fail "debootstrap could not make bookworm from $MIRROR (log above)"
    fi
    # What python:3.11-slim has and Debian's layout lacks: no PEP 668 marker (pip installs into
    # the system, here /usr/local/lib/python3.11/dist-packages) and `python` on the PATH.
    rm -f "$WORK"/base/usr/lib/python3*/EXTERNALLY-MANAGED
    ln -sf /usr/bin/python3 "$WORK/base/usr/local/bin/python"
    chroot "$WORK/base" apt-get clean
    rm -rf "$WORK"/base/var/lib/apt/lists/* "$WORK"/base/var/cache/apt/*.bin
    tar --numeric-owner -C "$WORK/base" -c . \
        | podman import --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin' \
            --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
            --change 'LABEL wmq.image-check.base=debootstrap' --quiet - "$BASE" >/dev/null
    rm -rf "$WORK/base"
    ok "made in $((SECONDS - START))s"
fi
if [ "$(podman image inspect --format '{{index .Config.Labels "wmq.image-check.base"}}' "$BASE")" = debootstrap ]; then
    ok "the debootstrap stand-in (IMAGE_CHECK_REBASE=1 makes it again; IMAGE_CHECK_PULL=1 pulls the real one)"
else
    ok "the registry's image"
fi

step "podman build"
BUILD_START=$SECONDS
LEND=()
HOST_CA=/etc/ssl/certs/ca-certificates.crt
if [ "${IMAGE_CHECK_HOST_CA:-1}" = 1 ] && [ -s "$HOST_CA" ]; then
    # The build's RUN steps fetch from PyPI over TLS: behind a TLS-inspecting proxy they need this
    # machine's CA bundle. Lent for the build only (bind mounts are not part of the image).
    printf '[global]\ncert = %s\n' "$HOST_CA" >"$WORK/pip.conf"
    LEND=(--volume "$HOST_CA:$HOST_CA:ro" --volume "$WORK/pip.conf:/etc/pip.conf:ro")
    echo "   this machine's CA bundle is lent to the RUN steps (IMAGE_CHECK_HOST_CA=0: not)"
fi
# No layer cache unless kept: each run's stand-in base is new, and cached layers would pile up.
LAYERS=false; [ "${IMAGE_CHECK_KEEP:-0}" = 1 ] && LAYERS=true
if ! podman build --isolation chroot --network host --layers="$LAYERS" "${LEND[@]}" -t "$IMAGE" \
        -f "$DOCKERFILE" "$ROOT" \
        >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    fail "podman build failed (its last lines above)"
fi
grep -E 'STEP [0-9]+/[0-9]+:' "$WORK/build.log" | sed 's/^/   /' || true
ok "built in $((SECONDS - BUILD_START))s, $(podman image inspect --format '{{.Size}}' "$IMAGE" \
    | awk '{printf "%.0f MB", $1 / 1e6}')"

step "the image's filesystem, mounted"
CID=$(podman create "$IMAGE")
MNT=$(podman mount "$CID")
mount -t proc proc "$MNT/proc"
mount --bind /dev "$MNT/dev"
IMAGE_USER=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
IMAGE_DIR=$(podman image inspect --format '{{.Config.WorkingDir}}' "$IMAGE")
mapfile -t IMAGE_ENV < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
[ "$IMAGE_USER" = 10001:10001 ] || fail "the image's user is '$IMAGE_USER', not 10001:10001"
ok "$MNT; runs as $IMAGE_USER in $IMAGE_DIR with ${IMAGE_ENV[*]}"

# As the container would run it: the image's user, directory and environment (plus the leading
# VAR=value words). `in_image` sets CMD (run in the background, "${CMD[@]}" & gives the command's
# own pid: chroot, env and sh each exec the next); `inside` runs it.
in_image() {
    local env=()
    while [ $# -gt 0 ] && [[ $1 == *=* ]]; do env+=("$1"); shift; done
    # shellcheck disable=SC2016  # "$0" and "$@" are the inner shell's
    CMD=(chroot --userspec="$IMAGE_USER" --groups="${IMAGE_USER%%:*}" "$MNT" /usr/bin/env -i "${IMAGE_ENV[@]}"
         HOME="$IMAGE_DIR" "${env[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "$IMAGE_DIR" "$@")
}
inside() { in_image "$@"; "${CMD[@]}"; }

step "native libraries"
PLATLIB=$(inside python3 -c 'import sysconfig; print(sysconfig.get_path("platlib"))')
cat >"$MNT/tmp/ldd_all.py" <<'EOF'
import os, subprocess, sys
checked, missing = 0, []
for folder, _, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
        except OSError:
            continue
        checked += 1
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        missing += [f"{path}: {line.strip()}" for line in out.splitlines() if "not found" in line]
print(checked)
print("\n".join(missing))
EOF
LDD=$(chroot "$MNT" python3 /tmp/ldd_all.py "$PLATLIB")
rm -f "$MNT/tmp/ldd_all.py"
MISSING=$(echo "$LDD" | tail -n +2 | sed '/^$/d')
[ -z "$MISSING" ] || { echo "$MISSING" >&2; fail "native files of the wheels need libraries the image lacks"; }
ok "$(echo "$LDD" | head -1) ELF files under $PLATLIB: every library they link is there (ldd)"

PROBE='
import ctypes.util, importlib, pkgutil, service, workers
names = [m.name for p in (service, workers) for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")]
for name in [*names, "uvloop", "httptools", "magic", "neonize"]:
    importlib.import_module(name)
print(ctypes.util.find_library("magic"))
print("\n".join(sorted({l.split(maxsplit=5)[5].strip() for l in open("/proc/self/maps") if len(l.split(maxsplit=5)) == 6 and ".so" in l})))
'
PROBED=$(inside python3 -c "$PROBE") || fail "importing the service's modules (every one of service/ and workers/, neonize, python-magic) failed"
ok "imported every module of service/ and workers/, uvloop, httptools, magic, neonize (its Go library) as $IMAGE_USER"
ok "python-magic finds libmagic as $(echo "$PROBED" | head -1)"
echo "   system libraries loaded (package; the wheels' own and Python's own modules left out):"
echo "$PROBED" | tail -n +2 | grep -Ev -e '-packages/|\.libs/|/python3\.[0-9]+/' | grep -E '^/(usr/)?lib' | while read -r lib; do
    owner=$(chroot "$MNT" dpkg-query -S "$lib" 2>/dev/null || chroot "$MNT" dpkg-query -S "${lib#/usr}" 2>/dev/null) \
        || owner="?: "
    printf '     %s (%s)\n' "$lib" "${owner%%:*}"
done

MIME=$(inside python3 -c 'import magic; print(magic.from_buffer(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", mime=True))') \
    || fail "python-magic cannot read a file's type"
[ "$MIME" = application/pdf ] || fail "python-magic took a PDF for $MIME (libmagic's database, libmagic-mgc?)"
ok "libmagic and its database: a PDF is $MIME"
FFMPEG=$(inside python3 -c 'import imageio_ffmpeg, subprocess; print(subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True, text=True, check=True).stdout.splitlines()[0])') \
    || fail "imageio-ffmpeg's ffmpeg does not run"
ok "$FFMPEG"

step "PostgreSQL on 127.0.0.1 (pgserver's binaries, as nobody)"
PG_BIN=$("$VENV_PYTHON" -c 'import importlib.util as u; print(u.find_spec("pgserver").submodule_search_locations[0])')/pginstall/bin
PG_PORT=$(free_port)
install -d -o nobody -g nogroup "$WORK/pg"
PG_DATA=$WORK/pg/data
runuser -u nobody -- "$PG_BIN/initdb" -D "$PG_DATA" -U wmq --auth=trust >"$WORK/pg/initdb.log" 2>&1 \
    || { cat "$WORK/pg/initdb.log" >&2; fail "initdb"; }
runuser -u nobody -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg/pg.log" -w \
    -o "-h 127.0.0.1 -p $PG_PORT -k $WORK/pg" start >/dev/null \
    || { cat "$WORK/pg/pg.log" >&2; fail "PostgreSQL did not start"; }
DB=postgresql://wmq@127.0.0.1:$PG_PORT/postgres
ok "$DB"

step "wmq migrate"
inside DATABASE_URL="$DB" wmq migrate >"$WORK/migrate.log" 2>&1 || { cat "$WORK/migrate.log" >&2; fail "wmq migrate"; }
grep -q "migrations done" "$WORK/migrate.log" || { cat "$WORK/migrate.log" >&2; fail "wmq migrate said nothing of its migrations"; }
ok "$(tail -n 1 "$WORK/migrate.log" | cut -c1-200)"

stopped() { local state; state=$(ps -o stat= -p "$1") || return 0; [[ $state == Z* ]]; }  # exited, not yet reaped
wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds, at most SECONDS
    local until=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt "$until" ] || return 1
        sleep 0.5
    done
}

step "wmq api, and its healthcheck"
API_PORT=$(free_port)
TOKEN=$("$VENV_PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
in_image DATABASE_URL="$DB" PORT="$API_PORT" HOST=127.0.0.1 ADMIN_TOKEN="$TOKEN" wmq api
"${CMD[@]}" >"$WORK/api.log" 2>&1 &
PIDS+=($!)
wait_for 60 curl -fsS "http://127.0.0.1:$API_PORT/readyz" \
    || { cat "$WORK/api.log" >&2; fail "the API did not answer /readyz within 60s"; }
ok "/readyz: $(curl -fsS "http://127.0.0.1:$API_PORT/readyz")"
inside PORT="$API_PORT" HOST=127.0.0.1 wmq healthcheck api || fail "wmq healthcheck api"
ok "wmq healthcheck api: 0"

step "wmq worker (WHATSAPP_TRANSPORT=neonize), and its healthcheck"
ALIVE=$MNT$IMAGE_DIR/worker-alive
rm -f "$ALIVE"
in_image DATABASE_URL="$DB" WHATSAPP_TRANSPORT=neonize WORKER_METRICS_PORT="$(free_port)" \
    MESSAGE_QUEUE_HEARTBEAT_INTERVAL=1 wmq worker
"${CMD[@]}" >"$WORK/worker.log" 2>&1 &
PIDS+=($!)
wait_for 60 test -f "$ALIVE" \
    || { cat "$WORK/worker.log" >&2; fail "the worker wrote no heartbeat within 60s"; }
ok "the heartbeat file $IMAGE_DIR/worker-alive"
HC_START=$SECONDS
inside WHATSAPP_TRANSPORT=neonize MESSAGE_QUEUE_HEARTBEAT_INTERVAL=1 wmq healthcheck worker \
    || { cat "$WORK/worker.log" >&2; fail "wmq healthcheck worker (it loads neonize)"; }
ok "wmq healthcheck worker: 0 (neonize loads; $((SECONDS - HC_START))s)"
# uvicorn, once shut down cleanly, raises the signal again: the API ends by SIGTERM (143).
API_PID=${PIDS[0]} WORKER_PID=${PIDS[1]}
kill -TERM "$API_PID" "$WORKER_PID"
for pid in "$API_PID" "$WORKER_PID"; do
    wait_for 60 stopped "$pid" || fail "pid $pid did not stop within 60s of SIGTERM"
done
API_CODE=0; wait "$API_PID" || API_CODE=$?
WORKER_CODE=0; wait "$WORKER_PID" || WORKER_CODE=$?
PIDS=()
if ! grep -q '"Finished server process' "$WORK/api.log" || [[ $API_CODE != @(0|143) ]]; then
    cat "$WORK/api.log" >&2
    fail "the API did not stop cleanly on SIGTERM (exit $API_CODE)"
fi
[ "$WORKER_CODE" = 0 ] || { cat "$WORK/worker.log" >&2; fail "the worker exited $WORKER_CODE on SIGTERM, not 0"; }
ok "the API (exit $API_CODE, after its clean shutdown) and the worker (exit 0) stopped on SIGTERM"

printf '\nIMAGE CHECK PASSED in %ds (%s from %s)\n' "$((SECONDS - START))" "$IMAGE" "$BASE"
