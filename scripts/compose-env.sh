#!/usr/bin/env bash
# Gives compose.yaml the passwords it requires: writes each one missing from .env (beside
# compose.yaml, where `docker compose` reads it) as a random value, and never changes one
# already there (MinIO keeps its root password in its data volume). .env is git-ignored
# and readable by its owner only.
set -euo pipefail

env_file="$(cd "$(dirname "$0")/.." && pwd)/.env"
umask 077
touch "$env_file"
[ -z "$(tail -c1 "$env_file")" ] || echo >>"$env_file"   # a last line without its newline
for name in FLOWER_PASSWORD MINIO_ROOT_PASSWORD; do
  if ! grep -q "^$name=." "$env_file"; then
    printf '%s=%s\n' "$name" "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$env_file"
    echo "compose-env: $name set to a random value in $env_file"
  fi
done
