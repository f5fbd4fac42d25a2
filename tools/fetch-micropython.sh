#!/bin/sh
# Fetch MicroPython's source from Debian's source archive, check it against the
# checksum kept in the repo, and unpack it. Usage:
#   fetch-micropython.sh DEB_VERSION SUITE CHECKSUM_FILE DEST_DIR
# A deb-src entry is derived from the machine's configured Debian mirror and kept
# in a private apt configuration under the cache, so the system is not changed and
# no root is needed.
set -eu

deb_version=$1      # e.g. 1.25.0+ds-1
suite=$2            # Debian suite that carries it, e.g. trixie
checksum_file=$(cd "$(dirname "$3")" && pwd)/$(basename "$3")    # "sha256  filename" lines
dest=$4

upstream=${deb_version%+ds-*}
orig="micropython_${upstream}+ds.orig.tar.xz"
cache=$(dirname "$dest")
work="$cache/apt"
downloads="$cache/downloads"

fail() {
    echo "error: $*" >&2
    echo "error: to build against your own MicroPython checkout instead, run e.g." >&2
    echo "error:     make MICROPY_DIR=/path/to/micropython ..." >&2
    exit 1
}

if [ -f "$dest/.fetched-$deb_version" ]; then
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: cannot fetch MicroPython $deb_version from Debian"

# The first plain Debian mirror in the machine's apt configuration (one-line or deb822 form).
mirror_uri() {
    {
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file|mirror[+a-z]*):/) { print $i; break } }'
        cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
            awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }'
    } | grep -v -e security -e '^$' | grep '/debian/\?$' | head -n 1
}

mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$downloads"
uri=$(mirror_uri)
[ -n "$uri" ] || fail "no Debian mirror found in /etc/apt/sources.list*; cannot derive a deb-src entry"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
opts=""
[ -f "$keyring" ] && opts="[signed-by=$keyring] "
echo "deb-src ${opts}${uri} ${suite} main" > "$work/sources.list"

set -- -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent \
    -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" \
    -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)"

if [ ! -f "$downloads/$orig" ]; then
    echo "fetching micropython $deb_version source (deb-src from $suite) ..."
    apt-get -qq "$@" update || fail "apt-get update for deb-src $suite failed (no network or mirror?)"
    (cd "$downloads" && apt-get -qq "$@" source --download-only "micropython=$deb_version") ||
        fail "apt-get source micropython=$deb_version failed"
fi

(cd "$downloads" && grep " $orig\$" "$checksum_file" | sha256sum -c --quiet -) ||
    { rm -f "$downloads/$orig"; fail "checksum mismatch for $orig (see $checksum_file)"; }

rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
tar -xJf "$downloads/$orig" -C "$dest.tmp" --strip-components=1
rm -rf "$dest" && mv "$dest.tmp" "$dest"
touch "$dest/.fetched-$deb_version"
echo "micropython $upstream source ready in $dest"
