# Shared by scripts/bench and scripts/bench-kms (sourced, not run). Sets up file systems under
# one work directory on /var/tmp, records everything it starts, and tears all of it down from an
# EXIT trap: kmsfs mounts, gocryptfs mounts, moto_server and the latency proxies.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KMSFS=$ROOT/target/release/kmsfs
BENCHLIB=$ROOT/benches/benchlib.py
PROXY=$ROOT/scripts/kms-proxy.py
WORK=${BENCH_DIR:-/var/tmp}/kmsfs-bench.$$
RESULTS=$WORK/results.tsv
FILES=${BENCH_FILES:-5000}
DIRS=${BENCH_DIRS:-50}
ROUNDS=${BENCH_ROUNDS:-3}
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL AWS_ENDPOINT_URL_KMS
# Keep the host's kmsfs config and runtime records (and the tests' ones) apart from ours.
export XDG_CONFIG_HOME=$WORK/config XDG_RUNTIME_DIR=$WORK/run
export AWS_CONFIG_FILE=$WORK/config/aws-config AWS_SHARED_CREDENTIALS_FILE=$WORK/config/aws-creds

declare -a KMSFS_MOUNTS=() FUSE_MOUNTS=() BG_PIDS=()
declare -A MNT=() KIND=() PROXY_OF=()
FS_LIST=()

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  local m p
  for m in "${KMSFS_MOUNTS[@]}"; do
    timeout 60 "$KMSFS" unmount "$m" >/dev/null 2>&1
    mountpoint -q "$m" 2>/dev/null && fusermount3 -uz "$m" 2>/dev/null
  done
  for m in "${FUSE_MOUNTS[@]}"; do
    mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null; }
  done
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null; done
  if [ -n "${BENCH_KEEP:-}" ]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}

setup_traps() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}

ensure_tools() {
  local need=() sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  for t in "$@"; do
    case $t in
      gocryptfs|fio) command -v "$t" >/dev/null || need+=("$t") ;;
      fusermount3) command -v fusermount3 >/dev/null || need+=(fuse3) ;;
      moto) command -v moto_server >/dev/null && python3 -c 'import boto3' 2>/dev/null \
              || python3 -m pip install -q 'moto[server]' ;;
    esac
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  [ -w /proc/sys/vm/drop_caches ] || die "need root to drop the page cache (/proc/sys/vm/drop_caches)"
}

build() {
  if [ -z "${BENCH_NO_BUILD:-}" ]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet --bin kmsfs) || die "release build failed"
  fi
  [ -x "$KMSFS" ] || die "no $KMSFS"
  # Our own copy: other jobs may rebuild target/release while the benchmark runs.
  cp "$KMSFS" "$WORK/kmsfs"
  KMSFS=$WORK/kmsfs
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# Seconds (float) taken by a command; its stdout goes to /dev/null.
timeit() {
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null
  t1=$(date +%s%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", (b - a) / 1e9 }'
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

MOTO_URL=""
start_moto() {
  local port i
  for i in 1 2 3 4 5; do
    port=$(free_port)
    moto_server -H 127.0.0.1 -p "$port" </dev/null >"$WORK/moto.$port.log" 2>&1 &
    BG_PIDS+=($!)
    local pid=$!
    for _ in $(seq 300); do
      kill -0 "$pid" 2>/dev/null || break
      if curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then
        MOTO_URL=http://127.0.0.1:$port
        log "moto_server at $MOTO_URL (pid $pid)"
        return 0
      fi
      sleep 0.2
    done
    kill "$pid" 2>/dev/null
  done
  die "moto_server did not start: $(tail -5 "$WORK"/moto.*.log)"
}

# start_proxy LATENCY_MS: sets PROXY_PORT (not in $(...): the subshell would keep the pipe open)
PROXY_PORT=""
start_proxy() {
  local lat=$1 pf=$WORK/proxy.$1.$RANDOM.port
  python3 "$PROXY" --upstream "$MOTO_URL" --latency-ms "$lat" --port-file "$pf" </dev/null >"$pf.log" 2>&1 &
  BG_PIDS+=($!)
  for _ in $(seq 100); do
    if [ -s "$pf" ]; then
      PROXY_PORT=$(cat "$pf")
      log "proxy ($lat ms) at 127.0.0.1:$PROXY_PORT (pid $!)"
      return 0
    fi
    sleep 0.1
  done
  die "proxy did not start: $(cat "$pf.log")"
}

proxy_stat() {  # proxy_stat PORT FIELD...
  curl -s "http://127.0.0.1:$1/__proxy/stats" >"$WORK/pstat.json"
  shift
  python3 "$BENCHLIB" status-get "$WORK/pstat.json" "$@"
}
proxy_reset() { curl -s -X POST "http://127.0.0.1:$1/__proxy/reset" >/dev/null; }

KMS_ARN=""
kms_key() { [ -n "$KMS_ARN" ] || KMS_ARN=$(python3 "$BENCHLIB" create-key "$MOTO_URL"); }

add_plain() {
  local name=$1
  mkdir -p "$WORK/$name"
  MNT[$name]=$WORK/$name KIND[$name]=plain
  FS_LIST+=("$name")
}

# add_gocryptfs NAME [extra mount args...]
add_gocryptfs() {
  local name=$1
  shift
  mkdir -p "$WORK/$name.cipher" "$WORK/$name.mnt"
  echo "kmsfs-bench-password" >"$WORK/gc.pass"
  gocryptfs -init -q -passfile "$WORK/gc.pass" "$WORK/$name.cipher" >/dev/null
  gocryptfs -q -nosyslog "$@" -passfile "$WORK/gc.pass" "$WORK/$name.cipher" "$WORK/$name.mnt"
  FUSE_MOUNTS+=("$WORK/$name.mnt")
  MNT[$name]=$WORK/$name.mnt KIND[$name]=gocryptfs
  FS_LIST+=("$name")
}

# add_kmsfs NAME local|aws PROXY_PORT|- [extra mount args...]
add_kmsfs() {
  local name=$1 prov=$2 port=$3
  shift 3
  [ "$port" = - ] && port=""
  local v=$WORK/$name.vault m=$WORK/$name.mnt
  mkdir -p "$m"
  if [ "$prov" = local ]; then
    "$KMSFS" init "$v" --key-file "$WORK/config/$name.key" >/dev/null
  else
    kms_key
    AWS_ENDPOINT_URL_KMS=http://127.0.0.1:$port "$KMSFS" init "$v" --kms-key-id "$KMS_ARN" \
      ${BENCH_INIT_ARGS_AWS:-} >/dev/null
    PROXY_OF[$name]=$port
  fi
  KMSFS_MOUNTS+=("$m")
  AWS_ENDPOINT_URL_KMS=${port:+http://127.0.0.1:$port} "$KMSFS" mount "$v" "$m" \
    --log-file "$WORK/$name.log" "$@"
  MNT[$name]=$m KIND[$name]=kmsfs
  FS_LIST+=("$name")
}

kstatus() { "$KMSFS" status "${MNT[$1]}" --json >"$WORK/kstat.json" && python3 "$BENCHLIB" status-get "$WORK/kstat.json" "${@:2}"; }

# The counters of kmsfs mount NAME: "GenerateDataKey Decrypt"
kms_counts() { kstatus "$1" kms_calls.GenerateDataKey kms_calls.Decrypt pool_hits pool_misses; }

record_rss() {
  local fs pid
  for fs in "${FS_LIST[@]}"; do
    [ "${KIND[$fs]}" = kmsfs ] || continue
    pid=$(kstatus "$fs" pid)
    printf 'rss\t%s\t%s\n' "$fs" "$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")" >>"$RESULTS"
  done
}

# Interleaving: round r runs the file systems starting at index r (mod n).
rotated() {
  local r=$1 n=${#FS_LIST[@]} i
  for ((i = 0; i < n; i++)); do echo "${FS_LIST[$(((i + r) % n))]}"; done
}

result() { printf 'r\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }
meta() { printf 'm\t%s\t%s\n' "$1" "$2" >>"$RESULTS"; }

machine_line() {
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), work dir on $(df --output=source,fstype "$WORK" | tail -1 | tr -s ' ' ' '), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
}

# Small-file phases for one round over the file systems in ROUND_ORDER; records results and
# (for kmsfs AWS mounts) KMS call deltas. Args: round, workloads to run (create stat lsR read read4).
run_smallfiles_round() {
  local r=$1; shift
  local fs w t before after g0 d0 g1 d1 ops mif port
  for w in "$@"; do
    for fs in $(rotated "$r"); do
      local dir=${MNT[$fs]}/tree.$r
      if [ "$w" = read ] || [ "$w" = read4 ]; then
        [ "${KIND[$fs]}" = kmsfs ] && "$KMSFS" forget "${MNT[$fs]}" >/dev/null
      fi
      if [ "$w" != create ]; then drop_caches; fi
      port=${PROXY_OF[$fs]:-}
      [ -n "$port" ] && proxy_reset "$port"
      [ "${KIND[$fs]}" = kmsfs ] && before=$(kms_counts "$fs")
      case $w in
        create) t=$(python3 "$BENCHLIB" create "$WORK/manifest" "$dir") ;;
        stat) t=$(python3 "$BENCHLIB" stat "$WORK/manifest" "$dir") ;;
        read) t=$(python3 "$BENCHLIB" read "$dir") ;;
        read4) t=$(python3 "$BENCHLIB" read "$dir" 4) ;;
        lsR) t=$(timeit ls -lR "$dir") ;;
      esac
      result "$w" "$fs" "$r" "$t"
      if [ "${KIND[$fs]}" = kmsfs ]; then
        after=$(kms_counts "$fs")
        read -r g0 d0 h0 m0 <<<"$before"; read -r g1 d1 h1 m1 <<<"$after"
        ops=$FILES; [ "$w" = lsR ] && ops=$((FILES + DIRS))
        # status deltas (provider calls, also local wraps in bucket-key mode), then what
        # really reached the KMS: the proxy's GenerateDataKey, Decrypt and peak concurrency.
        pst="0 0 0"
        [ -n "$port" ] && pst=$(proxy_stat "$port" by_op.GenerateDataKey by_op.Decrypt max_in_flight)
        printf 'k\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$fs" "$r" "$ops" "$((g1 - g0))" "$((d1 - d0))" "${pst// /$'\t'}"$'\t'"$((h1 - h0))"$'\t'"$((m1 - m0))" >>"$RESULTS"
      fi
      log "round $r $w $fs: $t s"
    done
  done
}
