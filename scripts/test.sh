#!/bin/sh
# Sets up everything the tests need on a fresh Debian 12 machine and runs them:
# the real peers from Debian (browsers, Kamailio, baresip, SIPp, rtpengine), a venv with the
# test extras, then pytest inside a loopback-only network namespace.   test.sh [pytest args]
set -eu
cd "$(dirname "$0")/.."
./scripts/install-peers.sh
./scripts/setup-venv.sh test
exec ./scripts/netns_run.sh .venv/bin/python -m pytest "$@"
