#!/usr/bin/env bash
# Builds Rookery's runtime image without pulling anything: the runtime stage
# of deploy/docker/Dockerfile (extracted from that file, so the two cannot
# drift) on a Debian base made here with debootstrap, around a binary built
# here. Where images can be pulled, `docker build -f deploy/docker/Dockerfile .`
# builds the same stage from debian:bookworm-slim and a compiled binary.
#
#   deploy/docker/build-local.sh                    # the release build
#   deploy/docker/build-local.sh --binary "$CARGO_TARGET_DIR/debug/rookery"
#   deploy/docker/build-local.sh --measure          # also: size, start time
#
# Options:
#   --binary PATH    the rookery binary [default: $CARGO_TARGET_DIR/release/rookery,
#                    else ~/.cache/rookery-target/release/rookery]
#   --tag TAG        the image [default: $ROOKERY_IMAGE, else rookery:local]
#   --base-tag TAG   the Debian base [default: $ROOKERY_BASE_IMAGE, else
#                    local/debian:bookworm-slim]; made once, reused while it exists
#   --rebuild-base   make the base again even if it exists
#   --measure        run the image once: its size, and the time from
#                    `docker run` to /readyz answering 200
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
dockerfile="$repo/deploy/docker/Dockerfile"
binary=""
tag="${ROOKERY_IMAGE:-rookery:local}"
base_tag="${ROOKERY_BASE_IMAGE:-local/debian:bookworm-slim}"
rebuild_base=0
measure=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "build-local.sh: $*" >&2; exit 1; }

while (($#)); do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a tag}"; shift 2 ;;
        --base-tag) base_tag="${2:?--base-tag needs a tag}"; shift 2 ;;
        --rebuild-base) rebuild_base=1; shift ;;
        --measure) measure=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "build-local.sh: unknown option $1" >&2; usage 2 ;;
    esac
done

if [[ -z "$binary" ]]; then
    binary="${CARGO_TARGET_DIR:-$HOME/.cache/rookery-target}/release/rookery"
fi
[[ -x "$binary" ]] || die "no rookery binary at $binary (build it, or give --binary PATH)"
docker info >/dev/null 2>&1 || die "docker is not available"
# No buildx here: the legacy builder builds a plain Dockerfile.
export DOCKER_BUILDKIT=0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The Debian mirror the host's apt uses (deb822 .sources or one-line .list).
host_mirror() {
    local file uri
    for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r "$file" ]] || continue
        uri="$(grep -m1 -oE '(^URIs:[[:space:]]*|^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)https?://[^[:space:]]+/debian/?([[:space:]]|$)' "$file" \
            | grep -oE 'https?://[^[:space:]]+' || true)"
        if [[ -n "$uri" ]]; then
            echo "$uri"
            return
        fi
    done
    echo "http://deb.debian.org/debian"
}

# The base: what debian:bookworm-slim holds (minbase: the essential and
# required packages and apt), trimmed as the official slim images are, with
# the host's apt sources so that `apt-get install` works in derived images.
make_base() {
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    local mirror rootfs
    mirror="$(host_mirror)"
    rootfs="$work/rootfs"
    echo "== base $base_tag: debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    # The host's Debian sources (main and security), not third-party ones.
    rm -f "$rootfs/etc/apt/sources.list"
    local file copied=0
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        if [[ ! -r "$file" ]] || ! grep -q 'debian' "$file" || grep -qE 'nodesource|google|docker\.com' "$file"; then
            continue
        fi
        mkdir -p "$rootfs$(dirname "$file")"
        cp "$file" "$rootfs$file"
        copied=1
    done
    ((copied)) || echo "deb $mirror bookworm main" >"$rootfs/etc/apt/sources.list"
    # As in the official slim images: no documentation, manual pages or
    # translations, now or from packages installed later.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
DPKG
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{man,info,lintian}/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    tar -C "$rootfs" --numeric-owner -c . \
        | docker import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            - "$base_tag" >/dev/null
    rm -rf "$rootfs"
}

if ((rebuild_base)) || ! docker image inspect "$base_tag" >/dev/null 2>&1; then
    make_base
else
    echo "== base $base_tag exists (--rebuild-base to make it again)"
fi

# The runtime stage: from `FROM ... AS runtime` to the next FROM or the end.
# Its FROM becomes the local base and its one COPY --from=build the local
# binary; any other COPY source is taken from the repository, at its path.
context="$work/context"
mkdir -p "$context"
awk -v base="$base_tag" '
    /^FROM[[:space:]]/ { in_stage = (tolower($0) ~ /[[:space:]]as[[:space:]]+runtime[[:space:]]*$/) ;
                         if (in_stage) { print "FROM " base " AS runtime"; found = 1; next } }
    in_stage { print }
    END { if (!found) exit 3 }
' "$dockerfile" >"$context/Dockerfile.stage" || die "no 'FROM ... AS runtime' stage in $dockerfile"

from_build="$(grep -cE '^COPY[[:space:]]+--from=build[[:space:]]+/rookery[[:space:]]' "$context/Dockerfile.stage" || true)"
[[ "$from_build" == 1 ]] \
    || die "the runtime stage must have exactly one 'COPY --from=build /rookery DEST' (found $from_build)"
sed -E 's#^COPY[[:space:]]+--from=build[[:space:]]+/rookery[[:space:]]#COPY rookery #' \
    "$context/Dockerfile.stage" >"$context/Dockerfile"
if grep -qE -- '--from=' "$context/Dockerfile"; then
    die "the runtime stage copies from another stage besides the binary: update build-local.sh"
fi

# Join continuation lines, then copy each COPY's sources into the context.
sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$context/Dockerfile" | grep -E '^(COPY|ADD)[[:space:]]' \
    | while read -r _ args; do
        read -r -a words <<<"$args"
        sources=()
        for word in "${words[@]}"; do
            [[ "$word" == --* ]] || sources+=("$word")
        done
        unset 'sources[${#sources[@]}-1]'   # the destination
        for source in "${sources[@]}"; do
            [[ "$source" == rookery ]] && continue
            (cd "$repo" && cp -a --parents "$source" "$context/") \
                || die "the runtime stage copies $source, which is not in the repository"
        done
    done

echo "== binary: $binary"
objcopy --strip-debug "$binary" "$context/rookery"
stat -c %s "$context/rookery" | awk '{ printf "   stripped: %.1f MB\n", $1 / 1e6 }'

echo "== image $tag from the runtime stage of deploy/docker/Dockerfile"
docker build -q -t "$tag" -f "$context/Dockerfile" "$context" >/dev/null 2>"$work/build.err" \
    || { cat "$work/build.err" >&2; die "docker build failed"; }
docker run --rm "$tag" --version >/dev/null || die "the image's rookery does not run"
size="$(docker image inspect -f '{{.Size}}' "$tag")"
base_size="$(docker image inspect -f '{{.Size}}' "$base_tag")"
awk -v tag="$tag" -v size="$size" -v base="$base_tag" -v base_size="$base_size" \
    -v version="$(docker run --rm "$tag" --version)" \
    'BEGIN { printf "   %s: %.1f MB (base %s: %.1f MB); %s\n", tag, size / 1e6, base, base_size / 1e6, version }'


if ((measure)); then
    # From `docker run` to /readyz answering 200, as a user starting a
    # single node sees it; polled from the host at the container's address.
    name="rookery-measure-$$"
    trap 'docker rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
    started="$(date +%s.%N)"
    docker run -d --name "$name" "$tag" >/dev/null
    ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name")"
    python3 - "$ip" "$started" <<'PY' || { docker logs "$name" 2>&1 | tail -20 >&2; die "not ready within 30 s"; }
import sys, time, urllib.request
ip, started = sys.argv[1], float(sys.argv[2])
while time.time() < started + 30:
    try:
        with urllib.request.urlopen(f"http://{ip}:9883/readyz", timeout=1) as r:
            if r.status == 200:
                print(f"   start: docker run to /readyz 200 in {time.time() - started:.2f} s")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.01)
sys.exit(1)
PY
    health=starting
    for _ in $(seq 1 90); do
        health="$(docker inspect -f '{{.State.Health.Status}}' "$name")"
        [[ "$health" == starting ]] || break
        sleep 1
    done
    echo "   HEALTHCHECK: $health"
    [[ "$health" == healthy ]] || die "the HEALTHCHECK says $health"
    stop_started="$(date +%s%N)"
    docker stop -t 35 "$name" >/dev/null
    stopped="$(date +%s%N)"
    awk -v ns="$((stopped - stop_started))" -v code="$(docker inspect -f '{{.State.ExitCode}}' "$name")" \
        'BEGIN { printf "   stop: docker stop (SIGTERM, drain) in %.2f s, exit code %s\n", ns / 1e9, code }'
fi
