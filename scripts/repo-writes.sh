#!/usr/bin/env bash
# What a test run leaves in the source tree. ctest runs
#   repo-writes.sh snapshot <file>   before every test (fixture repo_clean)
#   repo-writes.sh check <file>      after the last one
# and the check fails naming every path that `git status` shows now and did
# not show before (a new file, ignored or not, or a changed one): tests
# write into temporary directories, never into the repository. The build
# directory is left out (pass it as the third argument); outside a git work
# tree there is nothing to compare and both steps say so.
set -euo pipefail
mode="${1:?snapshot|check}"
file="${2:?snapshot file}"
build="${3:-}"
cd "$(dirname "$0")/.."
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "repo-writes: not a git work tree, nothing compared"
  exit 0
fi
# the build directory relative to the source tree ("" when outside it)
rel=""
if [ -n "$build" ]; then
  b="$(cd "$build" && pwd -P)"
  s="$(pwd -P)"
  case "$b/" in "$s"/*) rel="${b#"$s"/}/" ;; esac
fi
state() {
  git status --porcelain=v1 --ignored | while IFS= read -r line; do
    p="${line:3}"
    if [ -n "$rel" ] && [ "${p#"$rel"}" != "$p" ]; then continue; fi
    printf '%s\n' "$line"
  done | LC_ALL=C sort
}
case "$mode" in
  snapshot) state >"$file" ;;
  check)
    [ -f "$file" ] || { echo "repo-writes: no snapshot $file"; exit 1; }
    new="$(state | LC_ALL=C comm -13 "$file" -)"
    if [ -n "$new" ]; then
      echo "the tests left these in the source tree (git status, not there before the run):"
      printf '%s\n' "$new"
      exit 1
    fi
    echo "repo-writes: the source tree is as before the run"
    ;;
  *) echo "usage: $0 snapshot|check <file> [build dir]" >&2; exit 2 ;;
esac
