#!/usr/bin/env bash
# Installs what cliproxy needs on a Debian machine. Idempotent: it installs
# only the packages that are missing, and runs apt-get update only then.
#   scripts/setup.sh          build and runtime dependencies
#   scripts/setup.sh --test   also the test tools and the e2e npm packages
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

pkgs=(build-essential cmake pkg-config libluajit-5.1-dev luajit libuv1-dev
      libcurl4-openssl-dev libyaml-dev libssl-dev libyajl-dev node-llhttp
      libcrypt-dev libsqlite3-dev)
if [ "$want_test" = 1 ]; then
  # chromium: the control panel's browser tests (playwright-core)
  pkgs+=(lua-busted lua-check clang-format nginx-light wrk nodejs npm openssl
        clang libclang-rt-14-dev sqlite3 chromium)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    # nodejs/npm may come from outside Debian: accept any working binary.
    case "$p" in
      nodejs) command -v node >/dev/null && continue ;;
      npm) command -v npm >/dev/null && continue ;;
    esac
    missing+=("$p")
  fi
done

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
else
  echo "setup: all Debian packages present"
fi

if [ "$want_test" = 1 ] && [ -f spec/e2e/package.json ]; then
  if [ ! -d spec/e2e/node_modules ] || [ spec/e2e/package.json -nt spec/e2e/node_modules ]; then
    echo "setup: installing e2e npm packages (spec/e2e)"
    (cd spec/e2e && npm install --no-audit --no-fund --loglevel=error)
    touch spec/e2e/node_modules
  else
    echo "setup: e2e npm packages present"
  fi
fi

# The real coding CLIs for spec/e2e/clis.test.mjs, pinned in their own npm
# project (about 1.2 GB: Claude Code, Codex and opencode ship native binaries)
# so that the SDK install above stays light. The versions are exact and the
# lock file pins the tree; `npm install` rather than `npm ci`, because the
# registry here lacks some other platforms' optional packages (qwen-code's
# clipboard helpers), which the lock then cannot list and npm ci refuses.
if [ "$want_test" = 1 ] && [ -f spec/e2e/clis/package.json ]; then
  if [ ! -d spec/e2e/clis/node_modules ] || [ spec/e2e/clis/package.json -nt spec/e2e/clis/node_modules ] \
     || [ spec/e2e/clis/package-lock.json -nt spec/e2e/clis/node_modules ]; then
    echo "setup: installing the e2e CLIs (spec/e2e/clis: claude-code, codex, gemini-cli, qwen-code, opencode; about 1.2 GB)"
    (cd spec/e2e/clis && npm install --no-audit --no-fund --loglevel=error)
    touch spec/e2e/clis/node_modules
  else
    echo "setup: e2e CLIs present"
  fi
fi
