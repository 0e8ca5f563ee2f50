#!/usr/bin/env bash
# Usage: scripts/startup-time.sh   (5 runs; sort the first column and take the middle one)
# Time from `codex-portal serve --no-browser` to the first 200 on the launch URL (with its cookie).
cd "$(dirname "$0")/.."
.venv/bin/python -m compileall -q webapp  # as an installed wheel has it, even with PYTHONDONTWRITEBYTECODE
for i in 1 2 3 4 5; do
  port=$((21100 + i)); home=$(mktemp -d)
  start=$(date +%s.%N)
  CODEX_HOME=$home CODEX_PORTAL_ISSUER=http://127.0.0.1:9 .venv/bin/codex-portal serve --no-browser --port $port > $home/out 2>$home/err &
  pid=$!
  for n in $(seq 1 2000); do url=$(head -1 $home/out 2>/dev/null); [ -n "$url" ] && break; sleep 0.002; done
  code=$(curl -s -o /dev/null -w '%{http_code}' -c $home/jar -b $home/jar -L "$url")
  end=$(date +%s.%N)
  echo "$(echo "$end - $start" | bc) $code"
  [ "$code" = 200 ] || { echo "port $port"; cat $home/err | head -5; }; kill $pid; wait $pid 2>/dev/null; rm -rf $home
done
