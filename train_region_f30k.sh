#!/bin/sh
# Flickr30K, BUTD regions + BERT-base, released hyper-parameters.
#   sh train_region_f30k.sh                 # X-Dim (d=1024, 25 epochs, lr x0.1 at 15)
#   HEAD=esl_h sh train_region_f30k.sh      # ESL-H (d=512, k=2, 30 epochs, lr x0.1 at 15); esl_a for ESL-A
# Environment: DATA_PATH (holds f30k_precomp/), OUTPUT_DIR, BERT_PATH. Extra arguments are passed
# to train.py and override the ones below (e.g. --batch_size 64, or torchrun: see README).
set -e
HEAD=${HEAD:-xdim}
DATA_PATH=${DATA_PATH:-data/Flickr30K}
BERT_PATH=${BERT_PATH:-bert-base-uncased}
if [ "$HEAD" = xdim ]; then
  RECIPE="--embed_size 1024 --num_epochs 25 --lr_update 15"
else
  RECIPE="--embed_size 512 --kernel_size 2 --num_epochs 30 --lr_update 15"
fi
OUTPUT_DIR=${OUTPUT_DIR:-runs/f30k_region_$HEAD}
exec ${PYTHON:-python} train.py --encoders region_bert --sim_head "$HEAD" $RECIPE \
  --data_path "$DATA_PATH" --data_name f30k_precomp --bert_path "$BERT_PATH" \
  --batch_size 128 --learning_rate 5e-4 --vse_mean_warmup_epochs 1 --margin 0.2 --grad_clip 2.0 \
  --workers 10 --output_dir "$OUTPUT_DIR" "$@"
