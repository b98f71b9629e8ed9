#!/bin/sh
# Sets up a venv with the bridge and runs it on its embedded default (no PBX needed).  run.sh [serve args]
set -eu
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh
exec .venv/bin/mccp-bridge serve "$@"
