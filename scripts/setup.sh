#!/usr/bin/env bash
# Installs what cratedigger needs on a Debian machine (as root) and fetches the open
# benchmark corpus: real music that Debian ships under free licences.
# usage: scripts/setup.sh [PACKAGE...]   (default: the corpus packages the tests and demo use)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
need=()
# chromium runs the web page's end-to-end tests (web-tests/), driven from Node.js;
# redis-server and redis-cli run the throwaway Redis Clusters of the cluster store's tests.
for tool in sox:sox rubberband:rubberband-cli ffmpeg:ffmpeg pkg-config:pkg-config chromium:chromium \
    node:nodejs npm:npm redis-server:redis-server redis-cli:redis-tools; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
# libopus decodes the Opus files (symphonia has no Opus decoder of its own).
pkg-config --exists opus 2>/dev/null || need+=(libopus-dev)
dpkg -s libsox-fmt-mp3 >/dev/null 2>&1 || need+=(libsox-fmt-mp3)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: please install: ${need[*]} (apt-get install, as root)" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

corpus=${CRATEDIGGER_CORPUS:-$HOME/.cache/cratedigger-corpus}
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(marsshooter-data singularity-music warzone2100-music sonic-pi-samples fretsonfire-songs-sectoid)
shared_fetch="$here/../shared/corpus/fetch.sh"
if [ -x "$shared_fetch" ]; then
  "$shared_fetch" "$corpus" "${pkgs[@]}" >/dev/null
else
  # The same steps without the shared checkout: download each package and unpack it,
  # installing nothing.
  mkdir -p "$corpus/.debs"
  for p in "${pkgs[@]}"; do
    [ -e "$corpus/$p/.unpacked" ] && continue
    (cd "$corpus/.debs" && { apt-get download "$p" 2>/dev/null || { apt-get update -qq && apt-get download "$p"; }; })
    mkdir -p "$corpus/$p"
    for deb in "$corpus/.debs/${p}"_*.deb; do dpkg -x "$deb" "$corpus/$p"; done
    touch "$corpus/$p/.unpacked"
  done
  find "$corpus" -path "$corpus/.debs" -prune -o -type f \
    \( -iname '*.ogg' -o -iname '*.opus' -o -iname '*.flac' -o -iname '*.mp3' -o -iname '*.wav' \) \
    -print | sort > "$corpus/files.txt"
fi
echo "setup: corpus ready in $corpus ($(wc -l < "$corpus/files.txt") audio files)" >&2
