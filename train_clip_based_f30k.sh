#!/bin/sh
# Flickr30K raw images, ESL-CLIP on CLIP ViT-B/16, released hyper-parameters.
#   sh train_clip_based_f30k.sh             # ESL-H;  HEAD=esl_a for ESL-A, HEAD=cosine for plain CLIP
# Environment: IMAGE_ROOT (flickr30k-images/), ANN_PATH (dataset_flickr30k.json or its folder),
# OUTPUT_DIR, CLIP_PATH. Extra arguments override (e.g. --amp bf16 on CUDA).
set -e
HEAD=${HEAD:-esl_h}
IMAGE_ROOT=${IMAGE_ROOT:-data/Flickr30K/flickr30k-images}
ANN_PATH=${ANN_PATH:-data/Flickr30K/dataset_flickr30k.json}
CLIP_PATH=${CLIP_PATH:-openai/clip-vit-base-patch16}
OUTPUT_DIR=${OUTPUT_DIR:-runs/f30k_clip_$HEAD}
exec ${PYTHON:-python} train.py --encoders clip --sim_head "$HEAD" --kernel_size 2 \
  --dataset f30k --image_root "$IMAGE_ROOT" --ann_path "$ANN_PATH" --clip_path "$CLIP_PATH" \
  --batch_size 64 --num_epochs 15 --clip_lr 1e-6 --noclip_lr 3e-5 --weight_decay 0.2 \
  --warmup_proportion 0.1 --grad_clip 1.0 --evals_per_epoch 4 --val_split val \
  --workers 8 --output_dir "$OUTPUT_DIR" "$@"
