# What the device scripts (profile.sh, seed_gpu.sh) share, sourced by each after it sets
# SCRIPT (its name, for messages): the defaults and checks of the options they have in
# common (--out, --binary, --debs, --budget) and the machine's preparation.

OUT_DIR=${OUT:-target/device}
BINARY=.devrun/mnist.gz
DEBS=.gl
DEBS_GIVEN=

die() { echo "$SCRIPT: $*" >&2; echo "run with --help for usage" >&2; exit 2; }
need_value() { [ $# -ge 2 ] || die "$1 needs a value"; }
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

# check_common MIN_BUDGET: --budget a whole number of seconds, at least MIN_BUDGET;
# --binary a file; --debs, when given, a directory; --out created (and made absolute).
check_common() {
    case $BUDGET in '' | *[!0-9]*) die "--budget: expected a whole number of seconds, got '$BUDGET'" ;; esac
    [ "$BUDGET" -ge "$1" ] || die "--budget: $BUDGET s is too short (at least $1)"
    [ -f "$BINARY" ] || die "--binary: no file $BINARY"
    [ -z "$DEBS" ] || [ -d "$DEBS" ] || [ -z "$DEBS_GIVEN" ] || die "--debs: no directory $DEBS"
    mkdir -p "$OUT_DIR" || die "--out: cannot create $OUT_DIR"
    OUT_DIR=$(abs "$OUT_DIR")
}

# prepare: unpacks the loader debs into / (where there are any), gives wgpu its runtime
# directory, and puts the mnist binary at $M, in a directory $WORK removed on exit.
prepare() {
    if [ -n "$DEBS" ] && compgen -G "$DEBS/*.deb" >/dev/null; then
        for f in "$DEBS"/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg}
    mkdir -p -m 700 "$XDG_RUNTIME_DIR"
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    M=$WORK/mnist
    case $BINARY in
        *.gz) gzip -dc "$BINARY" >"$M" || die "--binary: cannot decompress $BINARY" ;;
        *) cp "$BINARY" "$M" || die "--binary: cannot copy $BINARY" ;;
    esac
    chmod +x "$M"
}
