#!/usr/bin/env bash
# Install clearmark into ./.venv: Debian packages it needs (scripts/system-packages.txt),
# a CPU build of PyTorch, then the project itself (editable) with the test extra, every
# version pinned by constraints.txt (regenerate it with scripts/lock.sh).
# Safe to run again: it only installs what is missing or differs from the pins. No prompts.
# Sourced, it only defines what follows (scripts/lock.sh and tests/test_setup.py use it).
set -euo pipefail

TORCH_SPEC="${CLEARMARK_TORCH_SPEC:-torch==2.13.0}"   # the CPU build; see README
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# The pins. Another TORCH_SPEC (a CUDA build) conflicts with them: set CLEARMARK_CONSTRAINTS
# to another file, or to nothing for no pins.
CONSTRAINTS="${CLEARMARK_CONSTRAINTS-constraints.txt}"
PY=.venv/bin/python

# pip's arguments, one a line, for where the CPU build of PyTorch comes from: PyTorch's own
# index, the only one besides local wheels that has the `+cpu` build constraints.txt pins
# (PyPI has the plain release only). None when the user chose where pip looks (an index,
# an extra index, find-links or no index, in PIP_* variables or pip's config files: a
# mirror, local wheels) or chose another torch (CLEARMARK_TORCH_SPEC).
torch_index_args() {
  [ -z "${CLEARMARK_TORCH_SPEC-}" ] || return 0
  local config  # whole first: grep -q stops early, and under pipefail pip's broken pipe fails
  config="$("$PY" -m pip config list 2>/dev/null)" || config=""
  grep -qE '^[^=]*\.(index-url|extra-index-url|find-links|no-index)=' <<<"$config" ||
    printf '%s\n' --extra-index-url "$TORCH_CPU_INDEX"
}

# The pins with torch's line left out: what holds once torch is another build than its pin.
BUT_TORCH=.venv/constraints-but-torch.txt

# pip's -c arguments, one a line: the pins, less torch's where the torch in .venv is the
# pinned release in another build (the plain one, from a mirror without the `+cpu` build).
pin_args() {
  [ -n "$CONSTRAINTS" ] || return 0
  local pinned installed
  pinned="$(sed -n 's/^torch==//p' "$CONSTRAINTS")"
  installed="$("$PY" -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null)" ||
    installed=""
  if [ -n "$pinned" ] && [ "$installed" != "$pinned" ] && [ "${installed%%+*}" = "${pinned%%+*}" ]; then
    grep -v '^torch==' "$CONSTRAINTS" >"$BUT_TORCH"
    printf '%s\n' -c "$BUT_TORCH"
  else
    printf '%s\n' -c "$CONSTRAINTS"
  fi
}

# TORCH_SPEC into .venv with the pins. Where pip finds no pinned `+cpu` build (a mirror of
# PyPI alone), the plain release with every other pin instead, and a warning.
install_torch() {
  local index pin
  mapfile -t index < <(torch_index_args)
  mapfile -t pin < <(pin_args)
  echo "setup: installing $TORCH_SPEC${index[1]:+ (the CPU build, from ${index[1]})}"
  "$PY" -m pip install -q "${pin[@]}" "${index[@]}" "$TORCH_SPEC" && return 0
  [ -n "$CONSTRAINTS" ] && grep -q '^torch==' "$CONSTRAINTS" || return 1
  echo "setup: warning: pip finds no $(grep '^torch==' "$CONSTRAINTS") where it looks;" \
    "installing the plain $TORCH_SPEC (tests/test_lock.py will name the difference)" >&2
  grep -v '^torch==' "$CONSTRAINTS" >"$BUT_TORCH"
  "$PY" -m pip install -q -c "$BUT_TORCH" "${index[@]}" "$TORCH_SPEC"
}

install_system_packages() {
  local missing=() pkg
  while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done <scripts/system-packages.txt
  ((${#missing[@]})) || return 0
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: warning: missing Debian packages (install them as root): ${missing[*]}" >&2
  fi
}

main() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  install_system_packages
  [ -x "$PY" ] || python3 -m venv .venv
  "$PY" -c "import torch" 2>/dev/null || install_torch
  local index pin
  mapfile -t index < <(torch_index_args)
  mapfile -t pin < <(pin_args)
  "$PY" -m pip install -q "${pin[@]}" "${index[@]}" -e ".[test]"
  echo "setup: done ($(.venv/bin/clearmark --version 2>/dev/null || echo clearmark installed))"
  echo "setup: the command is $PWD/.venv/bin/clearmark; to call it as plain \`clearmark\`, run:"
  echo "         source .venv/bin/activate"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
