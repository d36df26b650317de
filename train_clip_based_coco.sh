#!/bin/sh
# MS-COCO raw images, ESL-CLIP on CLIP ViT-B/16, released hyper-parameters.
#   sh train_clip_based_coco.sh             # ESL-H;  HEAD=esl_a for ESL-A, HEAD=cosine for plain CLIP
# Environment: IMAGE_ROOT (holds train2014/ and val2014/), ANN_PATH (folder of train_coco.json,
# dev_coco.json, testall_coco.json), OUTPUT_DIR, CLIP_PATH. Extra arguments override.
set -e
HEAD=${HEAD:-esl_h}
IMAGE_ROOT=${IMAGE_ROOT:-data/MS-COCO}
ANN_PATH=${ANN_PATH:-data/MS-COCO}
CLIP_PATH=${CLIP_PATH:-openai/clip-vit-base-patch16}
OUTPUT_DIR=${OUTPUT_DIR:-runs/coco_clip_$HEAD}
exec ${PYTHON:-python} train.py --encoders clip --sim_head "$HEAD" --kernel_size 2 \
  --dataset coco --image_root "$IMAGE_ROOT" --ann_path "$ANN_PATH" --clip_path "$CLIP_PATH" \
  --batch_size 64 --num_epochs 15 --clip_lr 1e-6 --noclip_lr 3e-5 --weight_decay 0.2 \
  --warmup_proportion 0.1 --grad_clip 1.0 --evals_per_epoch 4 --val_split dev \
  --workers 8 --output_dir "$OUTPUT_DIR" "$@"
