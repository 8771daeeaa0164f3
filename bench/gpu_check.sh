#!/usr/bin/env bash
# One prepared check of ctnode on a lent CUDA machine (issue 22, item 6), under 8 minutes, ending with ONE line:
#   gpu=NAME cuda_op_tests=passed dcn_max_abs_diff_fwd=X dcn_max_abs_diff_bwd=Y dcn_fwd_vs_torchvision=R
#   dcn_fwdbwd_vs_torchvision=R detect_s_per_slice=S ... e2e_s=E finetune_it_per_s=I total_s=T
#
# First, HERE (reaches PyPI): bash bench/gpu_wheels.sh   (var/gpu-wheels: the wheels the GPU image lacks;
# var/gpu-data/chest.tar.xz: the chest series; 43 MiB with the tree, of the tool's 64). Then the device tool's run:
#   command:   bash bench/gpu_check.sh
#   carry:     ["var/gpu-wheels", "var/gpu-data"]
#   timeout_s: 540        (the script stops its own steps at GPU_CHECK_BUDGET_S=450; a start costs 1-2 minutes)
# Its full log comes back as $OUT/gpu_check.log, the line also as $OUT/figures.txt.
#
# Steps: install the carried wheels (--target, beside the image's python3 with torch+CUDA); build detector.ops._C
# with the CUDA kernels (setup.py, out of tree, for this GPU's compute capability) and copy it into detector/ops/;
# pytest tests/ops -m cuda; ctnode's deform_conv2d against torchvision's (bench/gpu_dcn.py dcn); bench/detect.py's
# measurement of the chest series on CUDA (DCN model and its plain twin) and `ctnode detect --dicom` on it; 200
# fine-tuning iterations of the shipped chest model under AMP (bench/gpu_dcn.py finetune); the node end to end
# with pynetdicom as the PACS (bench/gpu_dcn.py e2e; bench/e2e.py itself needs Orthanc, which the image lacks).
# Exit 0 when every step passed, 1 when one failed or ran out of time (the line says which), 2 when torch sees no
# CUDA device.
#
# Dry run on a CPU (checks every step's code path with tiny sizes, nothing installed, the tree's .so untouched):
#   GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh --dry-run      (PYTHON defaults to .venv/bin/python there)
# Env: GPU_CHECK_BUDGET_S (450), PYTHON (python3), CTNODE_TEST_DATA (dry run, when var/gpu-data is absent),
# MAX_JOBS (nproc). Nothing in the project depends on this script.
set -uo pipefail

started=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1

dry=0
for arg in "$@"; do
    case $arg in
        --dry-run) dry=1 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $arg" >&2; exit 2 ;;
    esac
done
device=${GPU_CHECK_DEVICE:-cuda}
if [ "$device" != cuda ] && [ "$dry" -eq 0 ]; then
    echo "gpu_check: GPU_CHECK_DEVICE=$device needs --dry-run" >&2
    exit 2
fi
if [ "$dry" -eq 1 ]; then
    python=${PYTHON:-.venv/bin/python}
else
    python=${PYTHON:-python3}
fi
budget=${GPU_CHECK_BUDGET_S:-450}
deadline=$((started + budget))
work=$(mktemp -d /tmp/ctnode-gpu-check.XXXXXX)
log=${OUT:-$work}/gpu_check.log
figures=$work/figures.jsonl
: >"$figures"
failed=()
export python work device dry site repo

say() { echo "gpu_check: $*"; }
figure() { printf '{"%s": "%s"}\n' "$1" "$2" >>"$figures"; }
tiny=()
[ "$dry" -eq 1 ] && tiny=(--tiny)
site=$work/site

# step NAME CAP_S COMMAND...: runs it under the smaller of CAP_S and the time left; its FIGURES lines are kept.
step() {
    local name=$1 cap=$2 left rc t0
    shift 2
    left=$((deadline - $(date +%s)))
    if [ "$left" -lt 15 ]; then
        say "$name skipped: the ${budget} s budget is spent"
        failed+=("$name:no_time")
        return 1
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    say "== $name (at most ${cap} s)"
    t0=$(date +%s)
    if declare -F "$1" >/dev/null; then  # a function of this script: through a child bash
        local fn=$1
        export -f "${fn?}"
        timeout -k 10 "$cap" bash -c '"$@"' _ "$@" 2>&1 | tee "$work/$name.out"
    else
        timeout -k 10 "$cap" "$@" 2>&1 | tee "$work/$name.out"
    fi
    rc=${PIPESTATUS[0]}
    sed -n 's/^FIGURES //p' "$work/$name.out" >>"$figures"
    figure "${name}_step_s" "$(($(date +%s) - t0))"
    if [ "$rc" -ne 0 ]; then
        if [ "$rc" -eq 124 ]; then
            say "$name ran past ${cap} s"
            failed+=("$name:timeout")
        else
            say "$name failed (exit $rc)"
            failed+=("$name:exit$rc")
        fi
        return 1
    fi
    return 0
}

main() {
# 0. A CUDA device, or stop here.
if [ "$device" = cuda ]; then
    if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        say "FAILED: $python's torch sees no CUDA device (torch.cuda.is_available() is False); this check needs one" \
            "(on a CPU: GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh --dry-run)"
        exit 2
    fi
fi
say "device $device, python $("$python" -c 'import sys; print(sys.version.split()[0])'), dry run $dry, work $work"

# 1. The carried wheels, beside the image's packages (a fallback only where the image's version is older).
if [ "$dry" -eq 0 ]; then
    # shellcheck disable=SC2329  # run through step
    install_wheels() {
        set -eo pipefail
        ls var/gpu-wheels/*.whl >/dev/null
        wheels=(var/gpu-wheels/*.whl)
        while read -r wheel; do wheels+=("$wheel"); done < <("$python" - <<'PY'
import glob, importlib.metadata as md, os
from packaging.version import Version
for path in sorted(glob.glob("var/gpu-wheels/fallback/*.whl")):
    name, version = os.path.basename(path).split("-")[:2]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have is None or Version(have) < Version(version):
        print(path)
    print(f"fallback {name}: image has {have}, carried {version}", file=__import__("sys").stderr)
PY
        )
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${wheels[@]}"
        echo "installed ${#wheels[@]} wheels into $site"
    }
    if ! step wheels 90 install_wheels; then
        say "FAILED: the wheels did not install (run bash bench/gpu_wheels.sh here and carry var/gpu-wheels)"
        exit 1
    fi
    # The repo too: nothing is pip-installed there, and bench/detect.py imports detector from its own folder.
    export PYTHONPATH=$site:$repo${PYTHONPATH:+:$PYTHONPATH}
else
    say "dry run: $(find var/gpu-wheels -name '*.whl' 2>/dev/null | wc -l) carried wheels found (cp312: not installed here)"
fi

# 2. The chest series (carried as var/gpu-data/chest.tar.xz; the dry run falls back to ../shared/ct).
if [ -f var/gpu-data/chest.tar.xz ]; then
    if ! { mkdir -p "$work/ct" && tar -C "$work/ct" -xJf var/gpu-data/chest.tar.xz; }; then
        say "FAILED: var/gpu-data/chest.tar.xz does not unpack"
        exit 1
    fi
    export CTNODE_TEST_DATA=$work/ct
elif [ "$dry" -eq 1 ]; then
    export CTNODE_TEST_DATA=${CTNODE_TEST_DATA:-$repo/../shared/ct}
else
    say "FAILED: var/gpu-data/chest.tar.xz is missing (bash bench/gpu_wheels.sh here, carry var/gpu-data)"
    exit 1
fi
say "CT data in $CTNODE_TEST_DATA: $(find "$CTNODE_TEST_DATA/chest_lung_pet_ct_dx_A0001" -name '*.dcm' | wc -l) slices"

step device 60 "$python" bench/gpu_dcn.py device --device "$device"

# 3. The extension, built out of tree against this torch; on the GPU machine copied into detector/ops/.
# shellcheck disable=SC2329  # run through step
build_extension() {
    set -eo pipefail
    export MAX_JOBS=${MAX_JOBS:-$(nproc)}
    if [ "$device" = cuda ]; then
        if [ -z "${CUDA_HOME:-}" ]; then
            if [ -x /usr/local/cuda/bin/nvcc ]; then
                CUDA_HOME=/usr/local/cuda
            else
                CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
            fi
        fi
        export CUDA_HOME
        # A toolkit without the math libraries' headers: take those of torch's nvidia-* wheels (as .ci/cuda-build.sh).
        if [ ! -f "$CUDA_HOME/include/cublas_v2.h" ]; then
            nvidia=$("$python" -c "import nvidia; print(list(nvidia.__path__)[0])" 2>/dev/null || true)
            if [ -n "$nvidia" ]; then
                CPATH=$(find "$nvidia" -mindepth 2 -maxdepth 2 -name include -type d | tr '\n' ':')${CPATH:-}
                export CPATH
                echo "headers from $nvidia/*/include too"
            fi
        fi
        TORCH_CUDA_ARCH_LIST=$("$python" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
        export TORCH_CUDA_ARCH_LIST
        echo "nvcc $("$CUDA_HOME/bin/nvcc" --version | tail -1), arch $TORCH_CUDA_ARCH_LIST, $MAX_JOBS jobs"
    else
        export CTNODE_CPU_ONLY=1
    fi
    "$python" setup.py -q build_ext --build-temp "$work/build/temp" --build-lib "$work/build/lib"
    built=$(ls "$work"/build/lib/detector/ops/_C*.so)
    CTNODE_BUILT=$built CTNODE_DEVICE=$device "$python" - <<'PY'
import importlib.util, os
import torch
spec = importlib.util.spec_from_file_location("detector.ops._C", os.environ["CTNODE_BUILT"])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
key = "CUDA" if os.environ["CTNODE_DEVICE"] == "cuda" else "CPU"
ops = ["deform_conv2d", "_deform_conv2d_backward", "nms"]
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"ctnode::{op}", key)]
if missing:
    raise SystemExit(f"no {key} kernel registered for {missing}")
print(f"{os.path.basename(os.environ['CTNODE_BUILT'])} registers {key} kernels for {', '.join(ops)}")
PY
    if [ "$dry" -eq 0 ]; then
        cp "$built" detector/ops/
    else
        echo "dry run: built and loaded $built; the tree's own detector/ops/_C stays in use"
    fi
}
if ! step build 270 build_extension; then
    say "FAILED: the extension did not build; nothing else can run"
    "$python" bench/gpu_dcn.py summary "$figures"
    exit 1
fi

# 4. The CUDA op tests (the dry run runs the CPU ones of the deformable conv).
if [ "$dry" -eq 0 ]; then
    step op_tests 150 "$python" -m pytest tests/ops -m cuda -q -p no:cacheprovider
else
    step op_tests 150 "$python" -m pytest tests/ops/test_ops_deform_conv2d.py -m "not cuda" -q -p no:cacheprovider
fi
result=$?
tests_line=$(grep -E '^[0-9]+ (passed|failed)|[0-9]+ passed' "$work/op_tests.out" | tail -1)
figure cuda_op_tests "$([ "$result" -eq 0 ] && echo passed || echo FAILED)"
figure cuda_op_tests_count "$(grep -oE '[0-9]+ passed' <<<"$tests_line" | cut -d' ' -f1)"

# 5. Deformable conv against torchvision.
step dcn 120 "$python" bench/gpu_dcn.py dcn --device "$device" "${tiny[@]}"

# 6. Detection on the chest series: bench/detect.py's own measurement (DCN and plain), then `ctnode detect`.
# shellcheck disable=SC2329  # run through step
detect_bench() {
    set -eo pipefail
    for variant in dcn plain; do
        "$python" bench/detect.py --child chest "$variant" "$device" chest | tail -1 | tee "$work/detect-$variant.json"
    done
    "$python" - "$work" <<'PY'
import json, sys
from pathlib import Path
dcn, plain = (json.loads(Path(sys.argv[1], f"detect-{v}.json").read_text()) for v in ("dcn", "plain"))
print(f"chest series, {dcn['slices']} slices: {dcn['seconds'] / dcn['slices']:.4f} s/slice (DCN), "
      f"{plain['seconds'] / plain['slices']:.4f} (plain); {dcn['findings']} findings")
print("FIGURES " + json.dumps({"detect_s_per_slice": round(dcn["seconds"] / dcn["slices"], 4),
                               "detect_dcn_vs_plain": round(dcn["seconds"] / plain["seconds"], 2)}))
PY
    t0=$(date +%s.%N)
    "$python" -m node detect "$CTNODE_TEST_DATA/chest_lung_pet_ct_dx_A0001" -m chest -o "$work/detect-cli" --dicom \
        | tail -5
    t1=$(date +%s.%N)
    n=$(find "$work/detect-cli/dicom" -type f | wc -l)
    test "$n" -gt 0
    echo "ctnode detect --dicom: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s, wrote $n DICOM objects"
    printf 'FIGURES {"detect_cli_s": %s}\n' "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
}
step detect 150 detect_bench

# 7. 200 fine-tuning iterations (AMP on CUDA).
step finetune 180 "$python" bench/gpu_dcn.py finetune --device "$device" "${tiny[@]}"

# 8. The node end to end (pynetdicom as the PACS).
step e2e 150 "$python" bench/gpu_dcn.py e2e --device "$device" "${tiny[@]}"

figure total_s "$(($(date +%s) - started))"
[ "$dry" -eq 1 ] && figure dry_run 1
figure failed "$(IFS=,; echo "${failed[*]:-none}")"
line=$("$python" bench/gpu_dcn.py summary "$figures")
[ -n "${OUT:-}" ] && echo "$line" >"$OUT/figures.txt"
echo "$line"
[ "${#failed[@]}" -eq 0 ]
}

main 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
