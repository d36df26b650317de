#!/bin/sh
# MS-COCO, BUTD regions + BERT-base, released hyper-parameters (20 epochs, lr x0.1 at 10).
#   sh train_region_coco.sh                 # X-Dim (d=1024)
#   HEAD=esl_h sh train_region_coco.sh      # ESL-H (d=512, k=2); esl_a for ESL-A
# Environment: DATA_PATH (holds coco_precomp/), OUTPUT_DIR, BERT_PATH. Extra arguments override.
set -e
HEAD=${HEAD:-xdim}
DATA_PATH=${DATA_PATH:-data/MS-COCO}
BERT_PATH=${BERT_PATH:-bert-base-uncased}
if [ "$HEAD" = xdim ]; then
  RECIPE="--embed_size 1024"
else
  RECIPE="--embed_size 512 --kernel_size 2"
fi
OUTPUT_DIR=${OUTPUT_DIR:-runs/coco_region_$HEAD}
exec ${PYTHON:-python} train.py --encoders region_bert --sim_head "$HEAD" $RECIPE \
  --num_epochs 20 --lr_update 10 \
  --data_path "$DATA_PATH" --data_name coco_precomp --bert_path "$BERT_PATH" \
  --batch_size 128 --learning_rate 5e-4 --vse_mean_warmup_epochs 1 --margin 0.2 --grad_clip 2.0 \
  --workers 10 --output_dir "$OUTPUT_DIR" "$@"
