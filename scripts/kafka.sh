#!/usr/bin/env bash
# Install, start, stop a single-node Apache Kafka broker (KRaft) on loopback, for the demo and tests.
#   scripts/kafka.sh install   resolve the broker jars from Maven Central into the cache (once)
#   scripts/kafka.sh start     format storage (once) and start in the background; wait until it answers
#   scripts/kafka.sh stop      stop by PID (SIGTERM, then SIGKILL after 30 s)
#   scripts/kafka.sh status    exit 0 if the broker answers on its port
# Settings (env): SELFHEAL_KAFKA_PORT (9092), SELFHEAL_KAFKA_CONTROLLER_PORT (port+1),
# SELFHEAL_STATE_DIR (.local), SELFHEAL_KAFKA_HEAP (1g), SELFHEAL_CACHE_DIR (~/.cache/selfheal).
# Opt-in SASL mode (docs/security.md): SELFHEAL_KAFKA_SASL_USERS_FILE=<file of user:password lines>
# makes the client listener SASL_PLAINTEXT with SCRAM-SHA-512 (credentials added at format time)
# and turns on the StandardAuthorizer (ACLs; no ACL = denied). SELFHEAL_KAFKA_SASL_ADMIN (admin)
# names the user in that file the broker itself uses; it is the super user. The controller
# listener stays PLAINTEXT on loopback. Passwords: [A-Za-z0-9_.-] only. Default: PLAINTEXT, no ACLs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/deploy/kafka/pom.xml")
cache=${SELFHEAL_CACHE_DIR:-$HOME/.cache/selfheal}
libs="$cache/kafka-$kafka_version/libs"
state=${SELFHEAL_STATE_DIR:-$root/.local}
port=${SELFHEAL_KAFKA_PORT:-9092}
cport=${SELFHEAL_KAFKA_CONTROLLER_PORT:-$((port + 1))}
kdir="$state/kafka-$port"
pidfile="$kdir/broker.pid"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

install() {
  if [ -f "$libs/.complete" ]; then return; fi
  command -v java >/dev/null || { echo "kafka.sh: java (17+) is required" >&2; exit 1; }
  command -v mvn >/dev/null || { echo "kafka.sh: mvn is required to resolve the broker jars" >&2; exit 1; }
  echo "kafka.sh: resolving Apache Kafka $kafka_version from Maven Central into $libs"
  rm -rf "$libs"
  mvn -q -B -f "$root/deploy/kafka/pom.xml" dependency:copy-dependencies -DoutputDirectory="$libs"
  touch "$libs/.complete"
}

# SASL mode: rewrite the client listener as SASL_PLAINTEXT + SCRAM-SHA-512, add the authorizer,
# and collect `--add-scram` arguments for the storage format (SCRAM users exist from the start)
sasl_config() {
  local users=$SELFHEAL_KAFKA_SASL_USERS_FILE admin=${SELFHEAL_KAFKA_SASL_ADMIN:-admin} admin_pw="" name pw
  [ -r "$users" ] || { echo "kafka.sh: SELFHEAL_KAFKA_SASL_USERS_FILE=$users is not readable" >&2; exit 1; }
  while IFS=: read -r name pw || [ -n "$name" ]; do
    [ -z "$name" ] && continue
    [[ "$name$pw" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "kafka.sh: user '$name': name and password must be [A-Za-z0-9_.-]" >&2; exit 1; }
    format_args+=(--add-scram "SCRAM-SHA-512=[name=$name,password=$pw]")
    [ "$name" = "$admin" ] && admin_pw=$pw
  done <"$users"
  [ -n "$admin_pw" ] || { echo "kafka.sh: admin user '$admin' is not in $users" >&2; exit 1; }
  sed -i -e "s#^listeners=PLAINTEXT://#listeners=SASL_PLAINTEXT://#" \
    -e "s#^advertised.listeners=PLAINTEXT://#advertised.listeners=SASL_PLAINTEXT://#" \
    -e "s#^listener.security.protocol.map=.*#listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT#" \
    -e "s#^inter.broker.listener.name=.*#inter.broker.listener.name=SASL_PLAINTEXT#" "$kdir/server.properties"
  {
    echo "sasl.enabled.mechanisms=SCRAM-SHA-512"
    echo "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512"
    echo "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$admin\" password=\"$admin_pw\";"
    echo "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    echo "allow.everyone.if.no.acl.found=false"
    echo "# the broker's own requests to its controller arrive on the loopback PLAINTEXT controller listener"
    echo "super.users=User:$admin;User:ANONYMOUS"
  } >>"$kdir/server.properties"
  chmod 600 "$kdir/server.properties"
}

start() {
  install
  if running && answers; then echo "kafka.sh: broker already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return; fi
  if answers; then
    # another checkout (or a service) already runs a broker here: use it rather than fail
    echo "kafka.sh: a broker already answers on 127.0.0.1:$port (not started by this checkout); using it"
    return
  fi
  mkdir -p "$kdir/data"
  sed -e "s#@PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$cport#g" -e "s#@LOG_DIR@#$kdir/data#g" \
    "$root/deploy/kafka/server.properties" >"$kdir/server.properties"
  local format_args=()
  if [ -n "${SELFHEAL_KAFKA_SASL_USERS_FILE:-}" ]; then sasl_config; fi
  local java_opts=(-Xmx"${SELFHEAL_KAFKA_HEAP:-1g}" -Xms128m -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$root/deploy/kafka/log4j2.yaml" -Dkafka.logs.dir="$kdir")
  if [ ! -f "$kdir/data/meta.properties" ]; then
    java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format --standalone \
      -t "$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid)" -c "$kdir/server.properties" \
      ${format_args[@]+"${format_args[@]}"} >/dev/null
  fi
  nohup java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$kdir/server.properties" \
    >"$kdir/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 240); do
    if answers && grep -q "Kafka Server started" "$kdir/server.log" 2>/dev/null; then
      echo "kafka.sh: broker up on 127.0.0.1:$port (pid $(cat "$pidfile"), state $kdir)"; return
    fi
    running || { echo "kafka.sh: broker exited; see $kdir/stdout.log and $kdir/server.log" >&2; tail -20 "$kdir/stdout.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "kafka.sh: broker did not answer within 120 s; see $kdir/server.log" >&2; exit 1
}

stop() {
  running || { rm -f "$pidfile"; echo "kafka.sh: broker not running"; return; }
  local pid; pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$pidfile"; echo "kafka.sh: broker stopped"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) answers ;;
  *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
