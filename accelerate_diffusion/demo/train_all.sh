#!/bin/bash
# Train every demo model in sequence (vae -> clip -> dit -> unet -> ar_video), then measure
# prompt following. Usage (from a checkout; RUNS defaults to ./demo-runs):
#
#   nohup nice -n 19 bash accelerate_diffusion/demo/train_all.sh RUNS >> RUNS/train_all.log 2>&1 &
#
# One thread per stage. Each stage checkpoints into RUNS/<stage>/ every few minutes, resumes
# from there when the script is started again, and skips itself once RUNS/<stage>/DONE exists.
# Weights land in RUNS/weights/<model>/ (fp16); the evaluation in RUNS/eval/. While the file
# $DEMO_PAUSE_FILE (default ./PAUSE_TRAINING) exists, training sleeps. PYTHON picks the interpreter.
# The --max-minutes caps count CPU time (not pauses, not waiting for a busy CPU): 310 minutes in all.
set -u
R=$(realpath -m "${1:-demo-runs}")
PY=${PYTHON:-python}
mkdir -p "$R"
export DEMO_CACHE=${DEMO_CACHE:-$R/cache} OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
W=$R/weights
echo "$(date '+%F %T') train_all start: $R"
stage() {  # name, then the command
  name=$1; shift
  if [ -f "$R/$name/DONE" ]; then echo "$(date '+%F %T') $name: already done"; return 0; fi
  echo "$(date '+%F %T') $name: start"
  "$@" --out "$W" --run-dir "$R/$name" --resume --threads 1 >> "$R/$name.out" 2>&1
  rc=$?
  echo "$(date '+%F %T') $name: exit $rc"
  [ $rc -eq 0 ] && [ -f "$R/$name/DONE" ]
}
T="$PY -m accelerate_diffusion.demo.train"
stage vae  $T vae  --max-minutes 35 --lr 2e-3 --warmup 100 --batch 32 || exit 1
stage clip $T clip --max-minutes 25 --lr 1e-3 --warmup 100 --batch 128 --text-batch 256 || exit 1
stage dit  $T dit  --max-minutes 95 --lr 5e-4 --warmup 400 --batch 64 --ema 0.999 --n-images 60000 || exit 1
stage unet $T unet --max-minutes 90 --lr 5e-4 --warmup 400 --batch 64 --ema 0.999 --n-images 60000 || exit 1
stage ar_video $PY -m accelerate_diffusion.demo.train_video --max-minutes 65 --lr 5e-4 --warmup 300 --batch 16 \
      --ema 0.999 --n-clips 3000 --clip-frames 32 --max-frames 32 --short-frac 0.3 || exit 1
mkdir -p "$R/eval"
for k in vae dit unet ar_video; do
  if [ ! -f "$R/eval/$k.json" ]; then
    echo "$(date '+%F %T') eval $k"
    $PY -m accelerate_diffusion.demo.follow --kind $k --weights-dir "$W" --threads 1 --json "$R/eval/$k.json.tmp" \
        > "$R/eval/$k.txt" 2>&1 && mv "$R/eval/$k.json.tmp" "$R/eval/$k.json"
  fi
done
echo "$(date '+%F %T') train_all finished"
