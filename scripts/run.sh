#!/usr/bin/env bash
# Installs what is missing, builds, and runs the proxy with config.example.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exec build/cliproxy --config "${CONFIG:-config.example.yaml}"
