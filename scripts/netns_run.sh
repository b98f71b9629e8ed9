#!/bin/sh
# Runs a command in a private network namespace that has only loopback, so that nothing the tests
# start (browsers, SIP peers, the bridge) can reach any address but 127.0.0.1/::1.
if [ "$(id -u)" = 0 ]; then
  exec unshare -n sh -c 'ip link set lo up && exec "$@"' netns_run "$@"
fi
exec unshare -rn sh -c 'ip link set lo up && exec "$@"' netns_run "$@"
