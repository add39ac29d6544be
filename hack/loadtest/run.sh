#!/usr/bin/env bash
# Builds the webhook and the load tool, then runs issue 6's measurements
# (see BENCHMARKS.md, "Admission under load"):
#
#   hack/loadtest/run.sh bench [loadtest bench flags]   figures: null vs webhook, as ratios
#   hack/loadtest/run.sh faults                         rotation, SIGTERM (+ SIGKILL control), 60 s soak
#   hack/loadtest/run.sh soak [DURATION]                steady-rate soak (default 30m)
#
# Servers run on CPU 0 and the load generator on CPU 1 (taskset), at a
# higher priority than other work on the machine (NICE=-10 when root; set
# NICE=0 to leave priorities alone). Reports and logs go to OUT (default: a
# new temporary directory, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=$PATH:/usr/local/go/bin

run=()
nice_level=${NICE:--10}
if [ "$nice_level" != 0 ] && [ "$(id -u)" = 0 ]; then
	run=(nice -n "$nice_level")
	# Linux shares the CPU between sessions (autogroups) whatever their
	# members' nice values: give this run a session of its own, and that
	# session the priority.
	if [ -z "${PODMETA_LOAD_SESSION:-}" ] && command -v setsid >/dev/null; then
		PODMETA_LOAD_SESSION=1 exec setsid --wait "$0" "$@"
	fi
	if [ -w /proc/self/autogroup ]; then
		echo "$nice_level" >/proc/self/autogroup
	fi
fi
server_cpu=-1
if command -v taskset >/dev/null && [ "$(nproc --all)" -ge 2 ]; then
	run+=(taskset -c 1)
	server_cpu=0
else
	echo "warning: taskset or a second CPU missing: servers and load generator are not pinned" >&2
fi

out=${OUT:-$(mktemp -d -t podmeta-load-XXXXXX)}
mkdir -p "$out/bin"
echo "building into $out/bin" >&2
# Built like the shipped image (e2e/internal/imagebuild): static, stripped.
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$out/bin/webhook" ./cmd/webhook
go build -o "$out/bin/loadtest" ./hack/loadtest
lt=$out/bin/loadtest
wh=(--webhook-bin "$out/bin/webhook")

cmd=${1:-bench}
[ $# -gt 0 ] && shift
case $cmd in
bench)
	echo "load average before: $(cat /proc/loadavg)" | tee "$out/bench.txt"
	"${run[@]}" "$lt" bench "${wh[@]}" --server-cpu "$server_cpu" --work-dir "$out/work" --json "$out/bench.json" "$@" | tee -a "$out/bench.txt"
	echo "load average after: $(cat /proc/loadavg)" | tee -a "$out/bench.txt"
	;;
faults)
	status=0
	"${run[@]}" "$lt" rotate "${wh[@]}" --server-cpu "$server_cpu" --duration 30s --every 3s --json "$out/rotate.json" | tee "$out/rotate.txt" || status=1
	"${run[@]}" "$lt" sigterm "${wh[@]}" --server-cpu "$server_cpu" --after 5s --json "$out/sigterm.json" | tee "$out/sigterm.txt" || status=1
	# A rolling restart as deployed: the chart's 5 s shutdown delay, the load
	# following /readyz like the API server: nothing may go unanswered.
	"${run[@]}" "$lt" sigterm "${wh[@]}" --server-cpu "$server_cpu" --after 5s --drain 5s --json "$out/drain.json" | tee "$out/drain.txt" || status=1
	# The control: SIGKILL, with the load following /readyz as in the drain
	# run, must be reported as reviews lost (dropped, or closed unread),
	# not merely as an unclean exit.
	"${run[@]}" "$lt" sigterm "${wh[@]}" --server-cpu "$server_cpu" --after 5s --drain 5s --kill --json "$out/sigkill.json" >"$out/sigkill.txt" 2>&1 || true
	if grep -qE '(dropped|closed-unread)=[1-9]' "$out/sigkill.txt"; then
		echo "control ok: SIGKILL under load reported: $(grep -oE 'failed [0-9]+ \([^)]*\)' "$out/sigkill.txt" | head -1)"
	else
		echo "control FAILED: SIGKILL under load was not reported as lost reviews:" >&2
		cat "$out/sigkill.txt" >&2
		status=1
	fi
	"${run[@]}" "$lt" soak "${wh[@]}" --server-cpu "$server_cpu" --duration 60s --json "$out/soak.json" | tee "$out/soak.txt" || status=1
	echo "reports in $out" >&2
	exit $status
	;;
soak)
	"${run[@]}" "$lt" soak "${wh[@]}" --server-cpu "$server_cpu" --duration "${1:-30m}" --json "$out/soak.json" | tee "$out/soak.txt"
	;;
*)
	echo "usage: $0 bench|faults|soak [args]" >&2
	exit 2
	;;
esac
echo "reports in $out" >&2
