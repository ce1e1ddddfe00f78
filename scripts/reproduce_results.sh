#!/usr/bin/env bash
# Runs every command of docs/results.md, in the page's order, and regenerates the files its
# tables are copied from (each table's text names its file).
#
#   scripts/reproduce_results.sh              # all of it: about 30 hours of run time (README)
#   DRY_RUN=1 scripts/reproduce_results.sh    # print the commands only
#   PYTHON=.venv/bin/python PARALLEL=2 scripts/reproduce_results.sh
#
# Safe to interrupt and rerun: the sweep runner skips finished runs and resumes interrupted
# ones, `crossmodal.main` resumes from its last checkpoint, and each other step (an evaluation,
# a copy, a report) leaves a marker in runs/.reproduce/ and is skipped once done. Run it from
# the repository root; outputs go to runs/ (gitignored). tests/test_reproduce.py checks that
# every command shown in docs/results.md is one this script runs.
set -euo pipefail

PYTHON="${PYTHON:-python}"
PARALLEL="${PARALLEL:-2}"  # runs at a time in the sweeps
DRY_RUN="${DRY_RUN:-0}"
MARKERS=runs/.reproduce

cd "$(dirname "$0")/.."

# run CMD...: print the command as docs/results.md shows it, then run it ('python' is $PYTHON).
run() {
  echo "$*"
  [[ "$DRY_RUN" == 1 ]] && return 0
  if [[ "$1" == python ]]; then
    "$PYTHON" "${@:2}"
  else
    "$@"
  fi
}

# once NAME CMD...: run CMD unless step NAME already finished in an earlier invocation.
once() {
  local name="$1"; shift
  if [[ "$DRY_RUN" != 1 && -e "$MARKERS/$name" ]]; then
    echo "[done before] $*"
    return 0
  fi
  run "$@"
  [[ "$DRY_RUN" == 1 ]] || { mkdir -p "$MARKERS"; touch "$MARKERS/$name"; }
}

# sweep ARGS...: the sweep runner (skips and resumes by itself, so never marked done). A run
# that fails shows as failed in the sweep's results.md; the reproduction goes on.
sweep() {
  echo "python scripts/ablate.py $*"
  [[ "$DRY_RUN" == 1 ]] && return 0
  local arg root=""
  for arg in "$@"; do [[ "$arg" == --root=* ]] && root="${arg#--root=}"; done
  "$PYTHON" scripts/ablate.py "$@" --parallel="$PARALLEL" || echo "[some runs failed: see $root/results.md]"
}

# --- The max-pool gradient fix: seed 0 of two equal-trunk variants after it -----------------
sweep --config=experiments/avmnist.py:evals=robustness --sweep=experiments/sweeps/equal_trunks.py --only=concat_full,crossattn_cut --seeds=1 --root=runs/fix_check

# --- AV-MNIST: recipe calibration, the main comparison, the fusion study --------------------
sweep --config=experiments/avmnist.py --sweep=experiments/sweeps/calibration.py --seeds=1 --root=runs/calibration
run python -m crossmodal.main --config=experiments/avmnist.py --workdir=runs/main/image_audio
run python -m crossmodal.main --config=experiments/avmnist.py:modalities=audio --workdir=runs/main/audio
run python -m crossmodal.main --config=experiments/avmnist.py:modalities=image --workdir=runs/main/image
sweep --config=experiments/avmnist.py --sweep=experiments/sweeps/fusion.py --seeds=3 --root=runs/fusion
sweep --config=experiments/avmnist.py --sweep=experiments/sweeps/crossattn.py --seeds=3 --root=runs/crossattn
sweep --config=experiments/avmnist.py --sweep=experiments/sweeps/bottleneck.py --seeds=3 --root=runs/bottleneck

# --- retrieval and reconstruction ------------------------------------------------------------
run python -m crossmodal.main --config=experiments/avmnist_retrieval.py --workdir=runs/retrieval
run python -m crossmodal.main --config=experiments/avmnist_retrieval.py:labels=true --workdir=runs/retrieval_labels
run python -m crossmodal.main --config=experiments/avmnist_retrieval.py:loss=triplet --workdir=runs/retrieval_triplet
run python -m crossmodal.main --config=experiments/avmnist_reconstruction.py --workdir=runs/reconstruction
run python -m crossmodal.main --config=experiments/avmnist_reconstruction.py:snr=clean --workdir=runs/reconstruction_clean

# --- generation: transcription, captions, the conditional GAN ---------------------------------
sweep --config=experiments/avmnist_transcribe.py --sweep=experiments/sweeps/transcribe.py --seeds=3 --root=runs/transcribe
run python scripts/ablate.py --config=experiments/avmnist_transcribe.py --sweep=experiments/sweeps/transcribe.py --seeds=3 --root=runs/transcribe --metrics='exact_match$,cer$'
run python scripts/caption_overlap.py --split=held_out_twitter
run python scripts/caption_overlap.py --split=twitter_to_google
sweep --config=experiments/emoji_caption.py --sweep=experiments/sweeps/emoji_caption.py --seeds=3 --root=runs/emoji_caption
run python scripts/ablate.py --config=experiments/emoji_caption.py --sweep=experiments/sweeps/emoji_caption.py --seeds=3 --root=runs/emoji_caption --metrics='^test/(exact_match|cer|token_f1|bleu)$'
run python -m crossmodal.main --config=experiments/avmnist.py:modalities=image,variant=clean --workdir=runs/mnist_classifier
run python -m crossmodal.main --config=experiments/avmnist_gan.py:classifier=runs/mnist_classifier,mse=1.0 --workdir=runs/gan_trials/mse --config.objectives.adversarial.weight=0.0
run python -m crossmodal.main --config=experiments/avmnist_gan.py:steps=400,classifier=runs/mnist_classifier --workdir=runs/gan_trials/hinge_model_optimizer --config.train.log_every=50
DCGAN_OPTIMIZER=(--config.train.log_every=100 --config.optim.lr=2e-4 --config.optim.b1=0.5 --config.optim.weight_decay=0.0)
run python -m crossmodal.main --config=experiments/avmnist_gan.py:steps=600,classifier=runs/mnist_classifier --workdir=runs/gan_trials/hinge_dcgan_optimizer "${DCGAN_OPTIMIZER[@]}"
run python -m crossmodal.main --config=experiments/avmnist_gan.py:steps=600,classifier=runs/mnist_classifier,mse=1.0,loss=hinge --workdir=runs/gan_trials/hinge_plus_mse_dcgan_optimizer "${DCGAN_OPTIMIZER[@]}"
run python -m crossmodal.main --config=experiments/avmnist_gan.py:steps=600,classifier=runs/mnist_classifier,loss=non_saturating --workdir=runs/gan_trials/non_saturating_dcgan_optimizer "${DCGAN_OPTIMIZER[@]}"
run python -m crossmodal.main --config=experiments/avmnist_gan.py:steps=600,classifier=runs/mnist_classifier,decoder=conv --workdir=runs/gan_trials/conv_hinge_dcgan_optimizer "${DCGAN_OPTIMIZER[@]}"
run python scripts/gan_check.py --generator=conv --loss=hinge --steps=1000 --out=runs/gan_check/conv_hinge.png

# --- robustness (evaluations of the fusion sweep's seed-0 checkpoints) -----------------------
for f in late concat crossattn bottleneck; do
  once "robustness_$f" python -m crossmodal.main --config=experiments/avmnist.py:fusion=$f,evals=robustness \
      --workdir=runs/fusion/$f/seed0 --mode=eval
done
once robustness_image_only python -m crossmodal.main --config=experiments/avmnist.py:modalities=image,evals=robustness --workdir=runs/fusion/image_only/seed0 --mode=eval
once robustness_audio_only python -m crossmodal.main --config=experiments/avmnist.py:modalities=audio,evals=robustness --workdir=runs/fusion/audio_only/seed0 --mode=eval
sweep --config=experiments/avmnist.py:evals=robustness --sweep=experiments/sweeps/robustness.py --seeds=1 --root=runs/robustness
run python scripts/robustness_report.py --root=runs/fusion,runs/robustness --reference=late --variants=image_only,audio_only,late,concat,crossattn,bottleneck,late_modality_dropout_0.3,concat_modality_dropout_0.3
# modality dropout inside the attention fusions: seed 0 of the component sweeps, against the
# same sweep's default
once robustness_crossattn_default python -m crossmodal.main --config=experiments/avmnist.py:fusion=crossattn,evals=robustness \
    --workdir=runs/crossattn/crossattn/seed0 --mode=eval
once robustness_crossattn_dropout python -m crossmodal.main --config=experiments/avmnist.py:fusion=crossattn,evals=robustness \
    --workdir=runs/crossattn/modality_dropout_0.3/seed0 --mode=eval --config.train.modality_dropout=0.3
once robustness_bottleneck_default python -m crossmodal.main --config=experiments/avmnist.py:fusion=bottleneck,evals=robustness \
    --workdir=runs/bottleneck/mid_fusion_layer2/seed0 --mode=eval --config.model.fusion.num_layers=4 --config.model.fusion.fusion_layer=2
once robustness_bottleneck_dropout python -m crossmodal.main --config=experiments/avmnist.py:fusion=bottleneck,evals=robustness \
    --workdir=runs/bottleneck/modality_dropout_0.3/seed0 --mode=eval --config.model.fusion.num_layers=4 --config.model.fusion.fusion_layer=2 \
    --config.train.modality_dropout=0.3
run python scripts/robustness_report.py --root=runs/crossattn --reference=crossattn --variants=crossattn,modality_dropout_0.3
run python scripts/robustness_report.py --root=runs/bottleneck --reference=mid_fusion_layer2 --variants=mid_fusion_layer2,modality_dropout_0.3
once attention_maps python -m crossmodal.main --config=experiments/avmnist.py:fusion=crossattn,evals=attention \
    --workdir=runs/fusion/crossattn/seed0 --mode=eval
sweep --config=experiments/avmnist.py:fusion=crossattn,evals=robustness \
    --sweep=experiments/sweeps/missing_modality.py --seeds=3 --root=runs/missing_modality
once streams_crossattn python -m crossmodal.main --config=experiments/avmnist.py:fusion=crossattn,evals=robustness+streams \
    --workdir=runs/missing_modality/crossattn/seed0 --mode=eval --checkpoint=best
sweep --config=experiments/avmnist.py:evals=robustness --sweep=experiments/sweeps/equal_trunks.py --seeds=3 --root=runs/equal_trunks

# --- emoji: retrieval (best and last checkpoint) and fused classification --------------------
sweep --config=experiments/emoji_retrieval.py --sweep=experiments/sweeps/emoji_retrieval.py --seeds=3 --root=runs/emoji_retrieval
run python scripts/ablate.py --config=experiments/emoji_retrieval.py --sweep=experiments/sweeps/emoji_retrieval.py --seeds=3 --root=runs/emoji_retrieval --metrics=recall@5,median_rank
run python scripts/ablate.py --config=experiments/emoji_retrieval.py --sweep=experiments/sweeps/emoji_retrieval.py --seeds=3 --root=runs/emoji_retrieval --metrics=zero_shot/
for variant in held_out_concepts cross_style; do
  split=held_out_twitter
  [[ "$variant" == cross_style ]] && split=twitter_to_google
  for seed in 0 1 2; do
    last="runs/emoji_retrieval_last/$variant/seed$seed"
    run mkdir -p "runs/emoji_retrieval_last/$variant"
    once "emoji_last_copy_${variant}_$seed" cp -r "runs/emoji_retrieval/$variant/seed$seed" "$last"
    once "emoji_last_eval_${variant}_$seed" python -m crossmodal.main --config=experiments/emoji_retrieval.py:split=$split \
        --workdir="$last" --mode=eval --checkpoint=latest --config.seed=$seed
  done
done
run python scripts/ablate.py --config=experiments/emoji_retrieval.py --sweep=experiments/sweeps/emoji_retrieval.py --seeds=3 --root=runs/emoji_retrieval_last --report_only \
    || echo "[some runs of runs/emoji_retrieval_last are missing: see its results.md]"
run python scripts/ablate.py --config=experiments/emoji_retrieval.py --sweep=experiments/sweeps/emoji_retrieval.py --seeds=3 --root=runs/emoji_retrieval_last --metrics=zero_shot/
sweep --config=experiments/avmnist_retrieval.py --sweep=experiments/sweeps/avmnist_pretrain.py --seeds=3 --root=runs/avmnist_pretrain
run python scripts/ablate.py --config=experiments/avmnist_retrieval.py --sweep=experiments/sweeps/avmnist_pretrain.py --seeds=3 --root=runs/avmnist_pretrain --metrics='probe_.*/accuracy$,class/recall@1$'
sweep --config=experiments/avmnist.py --sweep=experiments/sweeps/avmnist_transfer.py --seeds=3 --root=runs/avmnist_transfer
run python scripts/ablate.py --config=experiments/avmnist.py --sweep=experiments/sweeps/avmnist_transfer.py --seeds=3 --root=runs/avmnist_transfer --metrics='probe_.*/accuracy$'
run python -m crossmodal.main --config=experiments/emoji.py:modalities=image --workdir=runs/lit/tower
sweep --config=experiments/emoji_retrieval.py --sweep=experiments/sweeps/emoji_lit.py --seeds=3 --root=runs/lit
run python scripts/ablate.py --config=experiments/emoji_retrieval.py --sweep=experiments/sweeps/emoji_lit.py --seeds=3 --root=runs/lit --metrics=zero_shot/accuracy,recall@1$
for variant in infonce infonce_tower infonce_lit sigmoid sigmoid_lit; do
  case "$variant" in
    infonce) preset=loss=infonce ;;
    infonce_tower) preset=loss=infonce,image_from=runs/lit/tower ;;
    infonce_lit) preset=loss=infonce,image_from=runs/lit/tower,locked=true ;;
    sigmoid) preset=loss=sigmoid ;;
    sigmoid_lit) preset=loss=sigmoid,image_from=runs/lit/tower,locked=true ;;
  esac
  for seed in 0 1 2; do
    run mkdir -p "runs/lit_last/$variant"
    once "lit_last_copy_${variant}_$seed" cp -r "runs/lit/$variant/seed$seed" "runs/lit_last/$variant/seed$seed"
    once "lit_last_eval_${variant}_$seed" python -m crossmodal.main --config=experiments/emoji_retrieval.py:$preset \
        --workdir="runs/lit_last/$variant/seed$seed" --mode=eval --checkpoint=latest --config.seed=$seed
  done
done
run python scripts/ablate.py --config=experiments/emoji_retrieval.py --sweep=experiments/sweeps/emoji_lit.py --seeds=3 --root=runs/lit_last --report_only
run python scripts/ablate.py --config=experiments/emoji_retrieval.py --sweep=experiments/sweeps/emoji_lit.py --seeds=3 --root=runs/lit_last --metrics=zero_shot/accuracy,recall@1$
sweep --config=experiments/emoji_retrieval.py --sweep=experiments/sweeps/emoji_batch.py --seeds=3 --root=runs/emoji_batch
run python scripts/ablate.py --config=experiments/emoji_retrieval.py --sweep=experiments/sweeps/emoji_batch.py --seeds=3 --root=runs/emoji_batch --metrics='zero_shot/accuracy,class/recall@1$'
sweep --config=experiments/emoji.py --sweep=experiments/sweeps/emoji.py --seeds=3 --root=runs/emoji
run python scripts/baselines.py --dataset=both --out=runs/baselines/baselines.md
# Where fusion must bind (docs/results.md; in progress): the sweep and the diagnostics.
sweep --config=experiments/avmnist_grid.py:task=grid2 --sweep=experiments/sweeps/binding.py --seeds=3 --root=runs/binding_grid2
once bind_digit_towers python -m crossmodal.main --config=experiments/avmnist.py:fusion=crossattn,variant=clean,snr=clean,trunk=to_token_stage,steps=1000 --workdir=runs/bind_diag/digit_towers
once bind_grid2_towers python -m crossmodal.main --config=experiments/avmnist_grid.py:fusion=crossattn,evals=attention,trunk=to_token_stage,encoders_from=runs/bind_diag/digit_towers --workdir=runs/bind_diag/grid2_towers_unlocked
once bind_match_towers python -m crossmodal.main --config=experiments/avmnist_grid.py:task=match,fusion=crossattn,trunk=to_token_stage,encoders_from=runs/bind_diag/digit_towers --workdir=runs/bind_diag/match_towers
once bind_match_scratch python -m crossmodal.main --config=experiments/avmnist_grid.py:task=match,fusion=crossattn --workdir=runs/bind_diag/match_scratch
# The fusion alone on given tokens (scripts/binding_diagnostics.py).
once bind_fo_synthetic python scripts/binding_diagnostics.py synthetic --noise=0.5 --steps=1000 --log_every=250 --out=runs/bind_diag/fusion_only/synthetic_0.5.jsonl
once bind_fo_synthetic_r2 python scripts/binding_diagnostics.py synthetic --noise=1.13 --audio_noise=2.6 --steps=1500 --log_every=500 --out=runs/bind_diag/fusion_only/synthetic_real_r2.jsonl
once bind_fo_synthetic_shared python scripts/binding_diagnostics.py synthetic --noise=1.13 --audio_noise=2.6 --shared_noise --steps=3000 --log_every=250 --out=runs/bind_diag/fusion_only/synthetic_real_r2_shared.jsonl
once bind_fo_synthetic_shared_image python scripts/binding_diagnostics.py synthetic --noise=1.13 --audio_noise=2.6 --shared_image_noise --steps=2000 --log_every=250 --out=runs/bind_diag/fusion_only/synthetic_real_r2_shared_image.jsonl
once bind_digit_towers_md python -m crossmodal.main --config=experiments/avmnist.py:fusion=crossattn,variant=clean,snr=clean,trunk=to_token_stage,steps=2000 --config.train.modality_dropout=0.5 --workdir=runs/bind_diag/digit_towers_md
once bind_fo_towers_r2 python scripts/binding_diagnostics.py towers --towers=runs/bind_diag/digit_towers --steps=0 --out=runs/bind_diag/fusion_only/towers_r2.jsonl
once bind_fo_towers_md python scripts/binding_diagnostics.py towers --towers=runs/bind_diag/digit_towers_md --steps=2500 --log_every=500 --out=runs/bind_diag/fusion_only/towers_md.jsonl
once bind_fo_towers_md_pooled python scripts/binding_diagnostics.py towers --towers=runs/bind_diag/digit_towers_md --steps=3000 --log_every=500 --pool_tokens=image,audio --out=runs/bind_diag/fusion_only/towers_md_pooled.jsonl
once bind_digit_towers_md_full python -m crossmodal.main --config=experiments/avmnist.py:fusion=crossattn,variant=clean,snr=clean,trunk=full,steps=2000 --config.train.modality_dropout=0.5 --workdir=runs/bind_diag/digit_towers_md_full
once bind_fo_towers_md_full python scripts/binding_diagnostics.py towers --towers=runs/bind_diag/digit_towers_md_full --trunk=full --steps=1500 --log_every=250 --out=runs/bind_diag/fusion_only/towers_md_full.jsonl

echo "Tables: runs/calibration, runs/fusion, runs/crossattn, runs/bottleneck, runs/robustness,"
echo "runs/emoji_retrieval, runs/emoji_retrieval_last, runs/emoji (results.md in each);"
echo "retrieval and reconstruction: metrics.jsonl of each workdir (docs/results.md says which)."
