#!/usr/bin/env bash
# Installs the Debian packages mmjax's datasets are built from (as root), or, when not root,
# prints the exact apt-get line and fails. Nothing is downloaded at run time after this.
set -euo pipefail
packages=(espeak-ng flite
  asterisk-core-sounds-en-wav asterisk-core-sounds-fr-wav asterisk-core-sounds-es-wav
  asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav
  fonts-noto-color-emoji unicode-data dataset-fashion-mnist wordnet-base)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "mmjax: missing system packages; run as root:" >&2
  echo "  apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
