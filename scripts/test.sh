#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the C unit tests,
# the busted specs and the end-to-end tests (ctest), then the C unit tests
# again under ASan and UBSan.
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
