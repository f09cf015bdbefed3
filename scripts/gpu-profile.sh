set -uo pipefail
B=/tmp/mosaic-gpu-build
SKIP_TORCH=1 OUT=$OUT bash scripts/gpu-check.sh build-only > /dev/null 2>&1 || true
ls $B/mosaic || exit 1
S="--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats"
# Bytes moved and instructions (to compare with the bytes counted), and the stall breakdown.
S="$S --metrics dram__bytes_read.sum,smsp__inst_executed.sum,regex:smsp__warp_issue_stalled_.*_per_warp_active.pct"
# SPECS: ";"-separated "KxN M kernel-regex" on mangled names: fused.*Li1ELb1E = v8 kernel MB=1 with
# residual; stream.*Lb0ELi8ELi1E = stream kernel (M <= 8) dense-only, group 128 (v10: <T, RES, GS, NB>); stream.*Lb1ELi8ELi1E
# with residual.
IFS=';' read -ra specs <<< "${SPECS:-4096x28672 1 stream.*Lb0ELi8ELi1E;4096x28672 1 stream.*Lb1ELi8ELi1E;4096x6144 1 stream.*Lb1ELi8ELi1E}"
for spec in "${specs[@]}"; do
  set -- $spec
  echo "=== ncu $1 M=$2 $3"
  ncu --kernel-name-base mangled -k regex:"$3" -c 1 $S $B/mosaic bench gemm --shapes $1 --m $2 --budget 0.1 --reps 1 2>&1 | grep -vE "^\|" | grep -E "Duration|Throughput|DRAM|Memory \[%\]|Compute|Occupancy|Warp Cycles|Active Warps|Eligible|Issued|No Eligible|Registers|Shared Memory Config|Dynamic Shared|Grid Size|Waves|Block Limit|Stall|stall|Theoretical|Achieved|dram__bytes|inst_executed" | grep -vE "stalled_.* +[0-9]\.[0-9]+$|stalled_.* +0$" | head -60
done
