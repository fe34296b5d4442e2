#!/usr/bin/env bash
# Refresh the vendored browser libraries from the npm registry, pinned; check their sha256.
set -euo pipefail
DEST=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
npm pack htmx.org@2.0.11 socket.io-client@4.8.4 --silent >/dev/null
tar -xzf htmx.org-2.0.11.tgz -O package/dist/htmx.min.js > "$DEST/htmx.min.js"
tar -xzf htmx.org-2.0.11.tgz -O package/LICENSE > "$DEST/htmx.LICENSE"
tar -xzf socket.io-client-4.8.4.tgz -O package/dist/socket.io.min.js > "$DEST/socket.io.min.js"
tar -xzf socket.io-client-4.8.4.tgz -O package/LICENSE > "$DEST/socket.io.LICENSE"
cd "$DEST"
grep -E '^[a-z.]+\.js ' VERSIONS | awk '{print $5 "  " $1}' | sha256sum --check
