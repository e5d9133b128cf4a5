#!/usr/bin/env bash
# Back up a sample tree into a local repository, restore it, and prove the restore is identical.
# Usage: bash examples/quickstart.sh [SAMPLE_DIR]   (default: vault's own source tree)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
sample=${1:-$here/vault}
work=$(mktemp -d "${TMPDIR:-/tmp}/vault-quickstart.XXXXXX")
trap 'rm -rf "$work"' EXIT

export VAULT_REPOSITORY="$work/repo"          # a local repository (s3://bucket/prefix works too)
export VAULT_PASSWORD="quickstart-password"   # in real use: VAULT_PASSWORD_FILE or --password-command
export VAULT_CACHE_DIR="$work/cache"

vault init
vault backup "$sample" --tag quickstart
vault snapshots
vault restore latest --target "$work/restore"
vault verify --read-data
diff -r --no-dereference "$sample" "$work/restore$(cd "$sample" && pwd)" && echo "quickstart: restore is identical to $sample"
