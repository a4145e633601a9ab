#!/usr/bin/env bash
# Distributed training on one machine with torchrun (mmdet 3.x's dist_train.sh).
#   bash tools/dist_train.sh CONFIG GPUS [train.py options...]
# NNODES / NODE_RANK / MASTER_ADDR / PORT select multi-node runs. On CPU, mmengine
# uses the gloo backend (env_cfg.dist_cfg.backend='gloo').
set -euo pipefail
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
cd "$(dirname "$0")/.."
PYTHONPATH="$(pwd):${PYTHONPATH:-}" \
python -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    tools/train.py "$CONFIG" --launcher pytorch "${@:3}"
