#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the C unit tests,
# the busted specs and the end-to-end tests (ctest), then the C unit tests
# and the fast path's end-to-end tests again under ASan and UBSan, then a
# short libFuzzer run of every fuzz target (ctest already replayed their
# corpora).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
echo "== build"
scripts/build.sh
echo "== ctest"
(cd build && ctest --output-on-failure -j2 --timeout 900)
echo "== C unit tests under ASan + UBSan"
BUILD_DIR=build-asan BUILD_TYPE=Debug scripts/build.sh -DCPX_SANITIZE=ON -DCPX_E2E=OFF
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j2 -R '^c_')
echo "== the server under ASan + UBSan: fast path, pipeline hand-offs, reloads, start-up failure, lingering close, doctor, tasks, refresh, management, usage, login, panel, OAuth forwarders, Vertex signing"
# Memory errors abort the proxy and fail the test; a leak at exit makes its
# exit status non-zero, which these tests assert to be 0.
(cd spec/e2e && ASAN_OPTIONS=detect_leaks=1 CPX_BIN="$PWD/../../build-asan/cliproxy" \
  node --test fast_path.test.mjs fast_path_lifecycle.test.mjs lingering.test.mjs doctor.test.mjs \
    tasks.test.mjs refresh.test.mjs management.test.mjs management_routes.test.mjs management_logs.test.mjs \
    usage.test.mjs login.test.mjs panel.test.mjs management_webui.test.mjs management_vertex.test.mjs)
echo "== soak: 2 minutes of mixed load, reloads and faults against the ASan + UBSan server"
# A small quarantine keeps ASan's own retention out of the growth bound.
ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=8 bench/soak.sh --minutes "${CPX_SOAK_MINUTES:-2}" \
  --bin "$PWD/build-asan/cliproxy" --conc 8 --rss-bound-mib 24
echo "== fuzz smoke: every target for ${CPX_FUZZ_SECONDS:-30} s (scripts/fuzz.sh for long runs)"
scripts/fuzz.sh --time "${CPX_FUZZ_SECONDS:-30}" --seed 1
