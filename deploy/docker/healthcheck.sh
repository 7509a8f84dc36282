#!/bin/bash
# The image's HEALTHCHECK: GET /healthz on the node's HTTP listener, with
# bash's /dev/tcp because the runtime image has no curl or wget. Exits 0 on
# a 200 answer, 1 otherwise (unreachable, 503, or no answer in 3 s).
set -euo pipefail

# The port of ROOKERY_HTTP_LISTEN or ROOKERY_HTTP__LISTEN when either moves
# the listener (the flag's variable wins, as in rookery), else the image's.
listen="${ROOKERY_HTTP_LISTEN:-${ROOKERY_HTTP__LISTEN:-0.0.0.0:9883}}"
listen="${listen//\"/}"
port="${listen##*:}"

exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r -t 3 status <&3
[[ "$status" == HTTP/1.?" 200 "* ]]
