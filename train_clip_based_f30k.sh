#!/bin/sh
# Flickr30K raw images, ESL-CLIP on CLIP ViT-B/16: the released recipe config/recipes/${HEAD}_clip_f30k.json.
#   sh train_clip_based_f30k.sh             # ESL-H;  HEAD=esl_a for ESL-A, HEAD=cosine for plain CLIP
# Runs from any folder; relative paths are taken from where you stand.
# Environment: IMAGE_ROOT (flickr30k-images/), ANN_PATH (dataset_flickr30k.json or its folder), CLIP_PATH,
# OUTPUT_DIR. Extra arguments override the recipe (e.g. --amp bf16 on CUDA).
set -e
exec ${PYTHON:-python} "$(dirname "$0")/train.py" --recipe "${HEAD:-esl_h}_clip_f30k" \
  --image_root "${IMAGE_ROOT:-data/Flickr30K/flickr30k-images}" --ann_path "${ANN_PATH:-data/Flickr30K/dataset_flickr30k.json}" \
  --clip_path "${CLIP_PATH:-openai/clip-vit-base-patch16}" --output_dir "${OUTPUT_DIR:-runs/f30k_clip_${HEAD:-esl_h}}" "$@"
