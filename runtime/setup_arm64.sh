#!/usr/bin/env bash
# `make setup-arm`: the aarch64 LiteRT runtime that runtime/arm64.py runs under user-mode QEMU, fetched by package
# name with pinned versions into DEST (default .arm64, ignored by git):
#   DEST/bin/qemu-aarch64   the static emulator of Debian 13's qemu-user (QEMU >= 10: Debian 12's 7.2 mis-emulates
#                           SME, which turned the int8 output of `-cpu max` into noise)
#   DEST/sysroot/           Debian 12 arm64 .debs of python3.11 and the libraries it and LiteRT load, extracted
#   DEST/site/              aarch64 wheels of runtime/arm64-requirements.txt (hash-checked)
#   DEST/versions.txt       what was installed; DEST/.stamp: the key of this script + the wheel list
# apt runs with private state (its own sources list, lists, cache and an empty dpkg status): the system's apt
# configuration is never read or changed. Idempotent: a DEST whose stamp matches is left alone. Built in a temp
# folder beside DEST and renamed onto it, so an interrupted run leaves the old DEST (or none), never half of one.
# usage: runtime/setup_arm64.sh [DEST] [HOST_PYTHON]
set -euo pipefail

DEST=$(realpath -m "${1:-.arm64}")  # absolute: fetch() runs apt from inside its folders
PY=${2:-.venv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
REQS=$HERE/arm64-requirements.txt
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security

# "package version sha256" (sha256 of the .deb; apt also checks every download against the signed index)
QEMU_PIN="qemu-user 1:10.0.13+ds-0+deb13u1 ca6ede739327a20ae5a3498230c8a3a9a072c586e131bc6bcc1201eb1725e336"
SYSROOT_PINS=(
  "libc6 2.36-9+deb12u14 01f4330719fd4f65580e16ea5a0527f372fca750e8f588d26deaf09f2d3b1cf4"
  "libgcc-s1 12.2.0-14+deb12u1 576926b283613db80168ddf76380a3bd877602778cf0d226caa7bfbfa71eacf3"
  "libstdc++6 12.2.0-14+deb12u1 26e138c677a985775331373828a6c286c551ff397cb735d00e2383cb273d1cb2"
  "python3.11-minimal 3.11.2-6+deb12u9 617855dbf3299e03873926c75d61feaf3d36924586aecc1951a0b965a95bc694"
  "libpython3.11-minimal 3.11.2-6+deb12u9 dd9847d2f77c5a924b1d3dd953b81f161db9374c94d03b9216191925350928c3"
  "libpython3.11-stdlib 3.11.2-6+deb12u9 9937cbe3f647aa89a590fec647438ce02098c113d1c6f70e4cb1230c368d42a4"
  "zlib1g 1:1.2.13.dfsg-1+deb12u1 61477d8059daf1765683a73099cc17941e1970acb520fd238646dedf99eb16f6"
  "libexpat1 2.5.0-1+deb12u5 4a733e7f636de4a4483e3e5d7b02dc8e788b115361a04dd58df89461ce2ae65a"
  "libffi8 3.4.4-1 80b5c36177dc0e29d531c7eddbed3cc7355cb490e49f8cfa5959572d161f27b3"
  "libbz2-1.0 1.0.8-5+b1 d3a96ece03326498b39ff093a76800dfcbcb1d4049d6ae6e9f6fa1aa7a590ad6"
  "liblzma5 5.4.1-1+deb12u2 36358d245f246234721e6c1c2ee5d11a46c1c877023c63f7570df02cd79964f5"
  "libssl3 3.0.22-1~deb12u2 3d04ecd8d0f57fed50d205abaeedfcc84c1960073ea085719c00add44b0ccd7f"
  "libuuid1 2.38.1-5+deb12u3 3b2d19df0f3190108cf54228c4cfc822226c06d8f3615a5ab16a7dffb1f58aed"
  "libcrypt1 1:4.4.33-2 eea0ad76ea5eb507127fea0c291622ea4ecdbb71c4b9a8ed9c76ae33fc1a0127"
)

fail() { echo "setup-arm: $*" >&2; exit 1; }

KEY=$(cat "$0" "$REQS" | sha256sum | cut -c1-16)
if [ -f "$DEST/.stamp" ] && [ "$(cat "$DEST/.stamp")" = "$KEY" ]; then
  echo "setup-arm: up to date ($DEST)"; exit 0
fi
for tool in apt-get dpkg-deb sha256sum; do command -v $tool >/dev/null || fail "$tool is required (Debian/Ubuntu host)"; done
[ -r "$KEYRING" ] || fail "$KEYRING missing (apt-get install debian-archive-keyring)"
[ -x "$PY" ] || fail "$PY missing (run make setup first)"

TMP=$(mktemp -d "$DEST.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
NEW=$TMP/new
mkdir -p "$NEW/bin" "$NEW/sysroot" "$NEW/site"
: > "$TMP/versions.txt"

# fetch NAME ARCH "deb lines" PIN...: download each pinned .deb into $TMP/NAME/debs with a private apt state
fetch() {
  local name=$1 arch=$2 sources=$3; shift 3
  local d=$TMP/$name
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/debs"
  : > "$d/status"
  printf '%s\n' "$sources" > "$d/sources.list"
  local opts=(-q -o "Dir::Etc::sourcelist=$d/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$d/lists"
              -o "Dir::Cache=$d/cache" -o "Dir::State::status=$d/status" -o Dir::Etc::preferences=/dev/null
              -o Dir::Etc::preferencesparts=- -o "APT::Architecture=$arch" -o APT::Architectures::="$arch"
              -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" -qq update >"$d/update.log" 2>&1 || fail "apt-get update ($name) failed: $(tail -n1 "$d/update.log")"
  local pin pkg ver sum deb
  for pin in "$@"; do
    read -r pkg ver sum <<<"$pin"
    if ! (cd "$d/debs" && apt-get "${opts[@]}" -qq download "$pkg:$arch=$ver") >"$d/dl.log" 2>&1; then
      # Debian's archive keeps only the newest build of a suite; a point release drops the pinned one. Take the
      # archive's (still checked by apt against the signed index), say so, and record it: bump the pin to match.
      (cd "$d/debs" && apt-get "${opts[@]}" -qq download "$pkg:$arch") >>"$d/dl.log" 2>&1 ||
        fail "cannot download $pkg ($arch) from Debian: $(tail -n1 "$d/dl.log")"
      echo "setup-arm: note: $pkg=$ver is gone from Debian's archive; took its current version (update the pin in $0)"
      sum=""
    fi
    deb=$(ls "$d/debs"/"${pkg}"_*.deb 2>/dev/null | head -n1)
    [ -n "$deb" ] || fail "$pkg: apt-get download left no .deb"
    if [ -n "$sum" ]; then
      echo "$sum  $deb" | sha256sum -c --status || fail "$deb: sha256 differs from the pin in $0"
    fi
    echo "$name $(dpkg-deb -f "$deb" Package)=$(dpkg-deb -f "$deb" Version)" >> "$TMP/versions.txt"
  done
}

echo "setup-arm: emulator (Debian 13 qemu-user) ..."
fetch qemu amd64 "deb [arch=amd64 signed-by=$KEYRING] $MIRROR trixie main
deb [arch=amd64 signed-by=$KEYRING] $MIRROR trixie-updates main
deb [arch=amd64 signed-by=$KEYRING] $SECURITY trixie-security main" "$QEMU_PIN"
dpkg-deb -x "$TMP"/qemu/debs/qemu-user_*.deb "$TMP/qemu/x"
cp "$TMP/qemu/x/usr/bin/qemu-aarch64" "$NEW/bin/qemu-aarch64"
qv=$("$NEW/bin/qemu-aarch64" --version | head -n1)
[[ $qv =~ version\ ([0-9]+)\. ]] && [ "${BASH_REMATCH[1]}" -ge 10 ] || fail "need QEMU >= 10, got: $qv"

echo "setup-arm: Debian 12 arm64 sysroot (python3.11) ..."
fetch sysroot arm64 "deb [arch=arm64 signed-by=$KEYRING] $MIRROR bookworm main
deb [arch=arm64 signed-by=$KEYRING] $MIRROR bookworm-updates main
deb [arch=arm64 signed-by=$KEYRING] $SECURITY bookworm-security main" "${SYSROOT_PINS[@]}"
for deb in "$TMP"/sysroot/debs/*.deb; do dpkg-deb -x "$deb" "$NEW/sysroot"; done

echo "setup-arm: aarch64 wheels (LiteRT, numpy) ..."
"$PY" -m pip install -qq --disable-pip-version-check --no-warn-conflicts --no-deps --require-hashes \
  --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_aarch64 \
  --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 --target "$NEW/site" -r "$REQS" \
  >"$TMP/pip.log" 2>&1 || fail "pip could not fetch the aarch64 wheels: $(grep -m1 ERROR "$TMP/pip.log" || tail -n1 "$TMP/pip.log")"

# the emulated python must import what the worker needs (a missing library shows here, not in the first parity run)
smoke=$(PYTHONPATH="$NEW/site" PYTHONNOUSERSITE=1 timeout 300 "$NEW/bin/qemu-aarch64" -L "$NEW/sysroot" \
  "$NEW/sysroot/usr/bin/python3.11" -c \
  "import platform, numpy, ai_edge_litert.interpreter as i; from importlib.metadata import version as v; print(platform.machine(), v('ai-edge-litert'), numpy.__version__)" 2>&1) ||
  fail "the emulated python cannot import LiteRT: $(echo "$smoke" | tail -n1)"
{ echo "qemu $qv"; echo "emulated $smoke"; cat "$TMP/versions.txt"; } > "$NEW/versions.txt"
echo "$KEY" > "$NEW/.stamp"

rm -rf "$DEST"
mv "$NEW" "$DEST"
echo "setup-arm: ready in $DEST ($qv; aarch64 python: $smoke)"
