#!/usr/bin/env bash
# Prepares what bench/gpu_check.sh carries to the lent GPU machine (which reaches no package registry).
#
# Run HERE (a machine that reaches PyPI), from anywhere: bash bench/gpu_wheels.sh
#   var/gpu-wheels/*.whl           cp312 manylinux x86_64 wheels of the runtime packages ctnode needs that the
#                                  GPU image (Python 3.12, torch 2.11+cu130, numpy, pillow, matplotlib, rich,
#                                  typer, pyyaml, prometheus-client, ...) lacks, at the versions our .venv resolved
#   var/gpu-wheels/fallback/*.whl  small pure-Python wheels the image has, installed there only when the image's
#                                  version is older than ours (typer and what it needs, typing_extensions, and
#                                  setuptools: pyproject.toml's SPDX license string needs setuptools >= 77)
#   var/gpu-data/chest.tar.xz      the 64-slice chest series of ../shared/ct (or $CTNODE_TEST_DATA), annotations
#                                  included, byte for byte: the detection benchmark, `ctnode detect` and the
#                                  fine-tune's background
# Both folders are under var/ (git-ignored). Prints the sizes; fails when the wheels pass WHEELS_LIMIT_MIB (40) or
# the tracked tree, the wheels and the data together pass CARRY_LIMIT_MIB (64, the device tool's limit).
# psycopg is left out (PostgreSQL only; SQLite is the default), greenlet too (SQLAlchemy 2.1 needs it only for
# asyncio).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
pip=${PIP:-.venv/bin/pip}
wheels=var/gpu-wheels
data=var/gpu-data
data_root=${CTNODE_TEST_DATA:-$repo/../shared/ct}
chest=chest_lung_pet_ct_dx_A0001
limit_mib=${WHEELS_LIMIT_MIB:-40}
carry_limit_mib=${CARRY_LIMIT_MIB:-64}

# Pinned to `.venv/bin/pip freeze`; a version that differs from the venv's stops the script (below).
RUNTIME=(
    pydicom==3.0.2
    highdicom==0.28.2
    pynetdicom==3.0.4
    pylibjpeg==2.1.0
    pylibjpeg-libjpeg==2.5.0
    pylibjpeg-openjpeg==2.6.0
    pylibjpeg-rle==2.2.0
    pyjpegls==1.5.1
    SQLAlchemy==2.1.9
    alembic==1.20.1
    Mako==1.4.3
    structlog==26.1.0
    pydantic==2.14.4
    pydantic_core==2.50.5
    pydantic-settings==2.16.3
    python-dotenv==1.2.4
    annotated-types==0.8.0
    typing-inspection==0.4.5
    hl7==0.4.5
)
FALLBACK=(
    typer==0.29.2
    annotated-doc==0.0.7
    typing_extensions==4.16.0
    setuptools==84.2.1
)

normal() { tr '[:upper:]_.' '[:lower:]--' <<<"$1"; }

# The pins must be what the venv runs (so the GPU machine runs what the tests here ran).
frozen=$("$pip" freeze --all 2>/dev/null | tr '[:upper:]_.' '[:lower:]--')
for spec in "${RUNTIME[@]}" "${FALLBACK[@]}"; do
    if ! grep -qx "$(normal "$spec")" <<<"$frozen"; then
        echo "gpu_wheels: $spec is not what $pip freeze says; update the pin" >&2
        exit 1
    fi
done

platforms=()
# glibc 2.39 on the GPU image (Ubuntu 24.04's Python 3.12.3); pip matches each manylinux_2_N tag exactly.
for n in $(seq 39 -1 17); do
    platforms+=(--platform "manylinux_2_${n}_x86_64")
done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {  # download DEST SPEC...
    local dest=$1
    shift
    mkdir -p "$dest"
    # PIP_CONSTRAINT is emptied: a machine-wide constraints file must not move a pin.
    PIP_CONSTRAINT="" "$pip" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --abi cp312 --abi abi3 --abi none "${platforms[@]}" -d "$dest" "$@"
}

rm -rf "$wheels"
download "$wheels" "${RUNTIME[@]}"
download "$wheels/fallback" "${FALLBACK[@]}"

# Exactly one wheel per package (two versions of one would stop the install there).
count=$(find "$wheels" -maxdepth 1 -name '*.whl' | wc -l)
if [ "$count" -ne "${#RUNTIME[@]}" ]; then
    echo "gpu_wheels: $count wheels in $wheels for ${#RUNTIME[@]} packages" >&2
    ls "$wheels" >&2
    exit 1
fi

mkdir -p "$data"
if [ ! -d "$data_root/$chest" ]; then
    echo "gpu_wheels: $data_root/$chest not found (set CTNODE_TEST_DATA)" >&2
    exit 1
fi
tar -C "$data_root" -cJf "$data/chest.tar.xz.part" "$chest"
mv "$data/chest.tar.xz.part" "$data/chest.tar.xz"

bytes() { find "$@" -type f -print0 | xargs -0 du -cb | tail -1 | cut -f1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
wheel_bytes=$(bytes "$wheels")
data_bytes=$(bytes "$data")
tree_bytes=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked_bytes=$(git ls-files -z -o --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
untracked_bytes=${untracked_bytes:-0}
total=$((wheel_bytes + data_bytes + tree_bytes + untracked_bytes))
echo "gpu_wheels: $count wheels + $(find "$wheels/fallback" -name '*.whl' | wc -l) fallback in $wheels:" \
     "$(mib "$wheel_bytes") MiB"
echo "gpu_wheels: $data/chest.tar.xz: $(mib "$data_bytes") MiB"
echo "gpu_wheels: tracked tree $(mib "$tree_bytes") MiB, untracked (not ignored) $(mib "$untracked_bytes") MiB;" \
     "all that travels: $(mib "$total") MiB of $carry_limit_mib"
if [ "$wheel_bytes" -gt $((limit_mib * 1048576)) ]; then
    echo "gpu_wheels: the wheels pass $limit_mib MiB" >&2
    exit 1
fi
if [ "$total" -gt $((carry_limit_mib * 1048576)) ]; then
    echo "gpu_wheels: what travels passes $carry_limit_mib MiB" >&2
    exit 1
fi
