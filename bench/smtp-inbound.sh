#!/usr/bin/env bash
# Benchmark: inbound SMTP acceptance rate, Mailroom (on PostgreSQL) next to
# Postfix, in the same run, with Postfix's own load generator:
#   smtp-source -s SESSIONS -m MESSAGES -l SIZE
# Both answer 250 only after the message is durable (Mailroom: PostgreSQL
# commit with synchronous_commit on; Postfix: fsync of the queue file).
#
# Needs: PostgreSQL on 127.0.0.1:5432 (postgres, trust), postfix (for
# smtp-source and as the peer), python3. Runs as root on a test machine: it
# reconfigures the local Postfix for the run and restores its files after.
# Usage: bench/smtp-inbound.sh   (env: SESSIONS=20 MESSAGES=2000 SIZE=4096)
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-2000}
SIZE=${SIZE:-4096}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

echo "== building mailroom (release)" >&2
cargo build --release --locked -p mailroom >&2
BIN=$CARGO_TARGET_DIR/release/mailroom

work=$(mktemp -d)
db=mailroom_bench_$$
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  if [ -f "$work/main.cf" ]; then
    postfix stop >/dev/null 2>&1 || true
    cp "$work/main.cf" /etc/postfix/main.cf
    cp "$work/master.cf" /etc/postfix/master.cf
  fi
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

rate() { # messages, start, end
  python3 -c "import sys; m,s,e=map(float,sys.argv[1:]); print(f'{m/(e-s):.0f}')" "$@"
}

cpu() { # CPU seconds so far of: the process $1, and every postgres process
  python3 - "$1" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK")
def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
pg = 0
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            with open(f"/proc/{d}/comm") as f:
                if f.read().strip() == "postgres":
                    pg += ticks(d)
        except OSError:
            pass
print(f"{ticks(sys.argv[1]) / hz:.2f} {pg / hz:.2f}")
PY
}

run_source() { # port → prints msg/s
  local start end
  start=$(date +%s.%N)
  smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f sender@remote.test -t bob@example.test "127.0.0.1:$1"
  end=$(date +%s.%N)
  rate "$MESSAGES" "$start" "$end"
}

echo "== Mailroom" >&2
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
SMTP_PORT=$(free_port)
ADMIN_PORT=$(free_port)
MAILROOM_STORE__URL="postgres://postgres@127.0.0.1:5432/$db" \
MAILROOM_STORE__MAX_CONNECTIONS=$((SESSIONS + 5)) \
MAILROOM_MTA__LISTEN="[\"127.0.0.1:$SMTP_PORT\"]" \
MAILROOM_MTA__GRPC_LISTEN=127.0.0.1:0 \
MAILROOM_ADMIN__LISTEN="127.0.0.1:$ADMIN_PORT" \
MAILROOM_MDA__LISTEN=127.0.0.1:0 \
MAILROOM_SUBMISSION__LISTEN='[]' \
MAILROOM_SUBMISSION__LISTEN_TLS='[]' \
MAILROOM_POP3__LISTEN='[]' MAILROOM_POP3__LISTEN_TLS='[]' \
MAILROOM_IMAP__LISTEN='[]' MAILROOM_IMAP__LISTEN_TLS='[]' \
MAILROOM_LIMITS__MAX_CONNECTIONS_PER_IP=$((SESSIONS * 2)) \
MAILROOM_SENDER_AUTH__CHECK_INBOUND=false \
MAILROOM_TELEMETRY__LOG_FILTER=warn \
  "$BIN" --data-dir "$work/data" serve >"$work/serve.out" 2>"$work/serve.err" &
pid=$!
for _ in $(seq 100); do grep -q "Admin token" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
admin=(--data-dir "$work/data" --admin-url "http://127.0.0.1:$ADMIN_PORT")
"$BIN" "${admin[@]}" domain add example.test >&2
echo "bench password 123" | "$BIN" "${admin[@]}" user add bob@example.test >&2
q() { psql -h 127.0.0.1 -U postgres -d "$db" -Atc "$1"; }
drain() { # waits until no queued recipient is left to deliver
  for _ in $(seq 120); do
    [ "$(q "SELECT COUNT(*) FROM queue_recipients WHERE state IN ('pending', 'deferred')")" = 0 ] && break
    sleep 0.5
  done
}
run_source "$SMTP_PORT" >/dev/null   # warm-up (connections, caches)
# Both servers start the measured pass with the warm-up delivered: the
# warm-up's deliveries are not part of what is measured (for Postfix, below,
# the same wait on its queue).
drain
read -r m0 p0 < <(cpu "$pid")
MAILROOM_RATE=$(run_source "$SMTP_PORT")
read -r m1 p1 < <(cpu "$pid")
# Every acknowledged message must end up in bob's mailbox (finished queue
# entries are removed): wait for the queue to drain, then count.
drain
read -r m2 p2 < <(cpu "$pid")
ACCOUNTED=$(q "SELECT COUNT(*) FROM messages")
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""

echo "== Postfix" >&2
cp /etc/postfix/main.cf "$work/main.cf"
cp /etc/postfix/master.cf "$work/master.cf"
PF_PORT=$(free_port)
postconf -e "inet_interfaces = loopback-only" "inet_protocols = ipv4" \
  "mydestination = example.test, localhost" "mynetworks = 127.0.0.0/8" \
  "local_recipient_maps =" "local_transport = discard" "default_transport = discard" \
  "smtpd_client_connection_count_limit = 0" "smtpd_client_connection_rate_limit = 0" \
  "maillog_file = /var/log/postfix.log"
postconf -MX smtp/inet
postconf -M "$PF_PORT/inet=$PF_PORT inet n - n - - smtpd"
postfix start >&2
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $PF_PORT), 1)" 2>/dev/null && break; sleep 0.1; done
run_source "$PF_PORT" >/dev/null
for _ in $(seq 120); do [ -z "$(postqueue -j 2>/dev/null)" ] && break; sleep 0.5; done
POSTFIX_RATE=$(run_source "$PF_PORT")

cat <<REPORT
smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE, loopback, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)
mailroom (PostgreSQL, 250 after commit): $MAILROOM_RATE msg/s   (in the mailbox after both passes: $ACCOUNTED of $((MESSAGES * 2)))
postfix  (queue file fsync):             $POSTFIX_RATE msg/s
ratio mailroom/postfix: $(python3 -c "print(f'{$MAILROOM_RATE/$POSTFIX_RATE:.2f}')")
CPU seconds during the measured pass: mailroom $(python3 -c "print(f'{$m1-$m0:.2f}')"), PostgreSQL $(python3 -c "print(f'{$p1-$p0:.2f}')"); while the queue drained after it: mailroom $(python3 -c "print(f'{$m2-$m1:.2f}')"), PostgreSQL $(python3 -c "print(f'{$p2-$p1:.2f}')")
REPORT
