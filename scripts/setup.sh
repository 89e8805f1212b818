#!/usr/bin/env bash
# Install clearmark into ./.venv: Debian packages it needs (scripts/system-packages.txt),
# a CPU build of PyTorch, then the project itself (editable) with the test extra, every
# version pinned by constraints.txt (regenerate it with scripts/lock.sh).
# Safe to run again: it only installs what is missing or differs from the pins. No prompts.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC="${CLEARMARK_TORCH_SPEC:-torch==2.13.0}"   # the CPU build; see README
# The pins. Another TORCH_SPEC (a CUDA build) conflicts with them: set CLEARMARK_CONSTRAINTS
# to another file, or to nothing for no pins.
CONSTRAINTS="${CLEARMARK_CONSTRAINTS-constraints.txt}"
pin=()
if [ -n "$CONSTRAINTS" ]; then pin=(-c "$CONSTRAINTS"); fi

missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < scripts/system-packages.txt
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: warning: missing Debian packages (install them as root): ${missing[*]}" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  .venv/bin/pip install -q "${pin[@]}" "$TORCH_SPEC"
fi
.venv/bin/pip install -q "${pin[@]}" -e ".[test]"
echo "setup: done ($(.venv/bin/clearmark --version 2>/dev/null || echo clearmark installed))"
echo "setup: the command is $PWD/.venv/bin/clearmark; to call it as plain \`clearmark\`, run:"
echo "         source .venv/bin/activate"
