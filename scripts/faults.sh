#!/usr/bin/env bash
# The fault suite (scripts/faults.py): its own Redis, PostgreSQL and two workers on free
# ports; per fault N images; prints jobs lost / stuck / duplicated and recovery time.
# The storage faults (storage_ro, storage_full: 30 s read-only or full) mount the storage
# on a tmpfs of its own, so they need root (CAP_SYS_ADMIN); without it they fail at once.
#   bash scripts/faults.sh                 # long form: 40 images per fault, every fault
#   bash scripts/faults.sh -n 6 --faults child,redis_bare,crash_submit   # a short one
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
exec nice .venv/bin/python scripts/faults.py "$@"
