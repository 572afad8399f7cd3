#!/usr/bin/env bash
# Account-pool selection cost: ns per pick (and pick+report) among N accounts
# (default 1000) with round-robin, fill-first, weighted round-robin, and with
# half or all but one of the accounts cooling. Builds build/ if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
[ -x "$BUILD_DIR/test_pool" ] || BUILD_DIR="$BUILD_DIR" scripts/build.sh
"$BUILD_DIR/test_pool" --bench "${1:-1000}"
