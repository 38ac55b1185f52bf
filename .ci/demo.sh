#!/usr/bin/env bash
# make demo: an S3 server on loopback (moto's server mode), a bucket filled with the sample media and a
# zip of them, one `deepscan scan s3://demo/` on the embedded default (no broker, SQLite), then the scan
# and its rows. The server stops when the demo ends, however it ends.
set -euo pipefail
BIN=${BIN:-.venv/bin}
SAMPLES=${1:-build/samples}
PORT=${DEMO_S3_PORT:-$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export DEEPSCAN_S3_ENDPOINT_URL="http://127.0.0.1:${PORT}"
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_DEFAULT_REGION=us-east-1
unset DEEPSCAN_BROKER_URL

"$BIN/moto_server" -H 127.0.0.1 -p "$PORT" > build/moto-demo.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
"$BIN/python" - "$PORT" <<'PY'  # wait until the server accepts connections (at most 15 s)
import socket, sys, time
for _ in range(150):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the S3 server did not start: see build/moto-demo.log")
PY

"$BIN/deepscan" samples "$SAMPLES" > /dev/null
if compgen -G "../shared/data/videos/*.mp4" > /dev/null; then  # research clips, where ../shared has them
  mkdir -p "$SAMPLES/research" && cp ../shared/data/videos/*.mp4 "$SAMPLES/research/"
fi
"$BIN/deepscan" samples "$SAMPLES" --upload s3://demo/ > /dev/null
echo "Scanning s3://demo/ (an S3 server on $DEEPSCAN_S3_ENDPOINT_URL) on the embedded default (SQLite: deepscan.db)"
"$BIN/deepscan" scan s3://demo/
"$BIN/deepscan" scans --format table
"$BIN/deepscan" results --format table
