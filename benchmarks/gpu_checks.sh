#!/usr/bin/env bash
# The checks that need a GPU, in one run (results in BENCHMARKS.md):
#   1. the Triton kernel tests compiled for the GPU (CI runs them in the Triton interpreter on CPU),
#   2. the MARS² recipe on one GPU in bf16 (short run: warm-up, 4 RL steps, checkpoints, held-out eval),
#   3. the same under FSDP2 (accelerate's fsdp2.yaml with one process), then resumed from its last checkpoint,
#   4. benchmarks/moda_gpu.py (MoDA efficiency against our n_depth=0 kernel and SDPA flash; autotunes the
#      Triton kernels per sequence-length bucket on first use, then 5 timed samples per variant and shape),
#   5. vLLM (needs the `vllm` package; skipped, saying so, without it): the MARS² recipe with each agent's engine
#      colocated in the training process in sleep mode, then FSDP2 weights pushed in buckets to a real
#      `trl vllm-serve` (two processes: the server, and a one-process FSDP2 trainer sharing its GPU).
#   6. async search against real vLLM servers: two `trl vllm-serve` of a tiny Qwen2 on the one GPU, then
#      `trl-mars search` with both agents on them, lockstep and --search-mode async (2 to 4 minutes, mostly
#      server start-up; needs the vllm extra).
# usage: bash benchmarks/gpu_checks.sh [LOG_DIR [CHECK...]]
#        (CHECK: kernels mars2 fsdp2 moda vllm async_search; default all). All six exceed one 15-minute lending;
#        issue 20's steps alone: bash benchmarks/gpu_checks.sh gpu_logs vllm async_search (about 12 minutes).
# Each check has its own time limit; its log goes to LOG_DIR/<name>.log.
set -uo pipefail
LOG=${1:-gpu_logs}
CHECKS=("${@:2}")
[ ${#CHECKS[@]} -eq 0 ] && CHECKS=(kernels mars2 fsdp2 moda vllm async_search)
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$LOG/env.txt"
$PY -c "import torch, triton, transformers, trl; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__, 'trl', trl.__version__)" | tee -a "$LOG/env.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to LOG/NAME.log, print its tail
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    timeout "$limit" "$@" >"$LOG/$name.log" 2>&1
    echo "=== $name: exit $?"
    grep -v '^\s*$' "$LOG/$name.log" | tail -n 12
}

# ---- async search against real vLLM servers (issue 20, items 1-2) ------------------------------------------------
async_search() {  # two servers of one tiny Qwen2 (head_dim 64), 0.3 of the GPU each; the same search both ways
    local model pids=() port mode
    model=$($PY -c "from trl_mars.testing import tiny_model_path
print(tiny_model_path('qwen2', hidden_size=256, num_hidden_layers=4, intermediate_size=512,
                     max_position_embeddings=8192))")
    for port in 8000 8001; do
        $PY -m trl.scripts.vllm_serve --model "$model" --port $port --gpu_memory_utilization 0.3 \
            --max_model_len 4096 --enforce_eager true >"$LOG/vllm_$port.log" 2>&1 &  # eager: faster start-up
        pids+=($!)
    done
    for port in 8000 8001; do  # VLLMClient waits for /health/
        $PY -c "from trl.generation.vllm_client import VLLMClient; VLLMClient('http://localhost:$port', connection_timeout=240)" \
            || { tail -n 20 "$LOG/vllm_$port.log"; kill "${pids[@]}"; return 1; }
    done
    local agents=(--model "a=$model" --vllm-server a=http://localhost:8000 --model "b=$model"
                  --vllm-server b=http://localhost:8001)
    for mode in lockstep async; do
        $PY -m trl_mars.search "${agents[@]}" --benchmark embedded --num-problems 64 --group-size 64 --max-nodes 8 \
            --max-new-tokens 512 --search-mode $mode --max-inflight 1 --quiet --output "/tmp/search-$mode"
        $PY -c "import json; r = json.load(open('/tmp/search-$mode/summary.json'))['runs']['system']
print('$mode', r['nodes'], 'nodes in', round(r['seconds'], 1), 's:', round(r['nodes'] / r['seconds'], 1), 'nodes/s')"
    done
    kill "${pids[@]}"
    wait
}
export -f async_search
export LOG PY
# ---- end of async search ----------------------------------------------------------------------------------------

SMOKE=(--max_steps 4 --warmup_steps_sft 300 --eval_repeats 1 --num_eval_problems 16 --save_steps 2
       --logging_steps 1 --use_cpu false --bf16 true)
FSDP2=(-m accelerate.commands.launch --config_file recipes/accelerate_configs/fsdp2.yaml --num_processes 1)
for check in "${CHECKS[@]}"; do
    case $check in
    kernels) step kernels_gpu 180 $PY -m pytest -q -n 8 -p no:cacheprovider tests/ops tests/models ;;
    mars2) step mars2_gpu 150 $PY recipes/mars2.py "${SMOKE[@]}" --output_dir /tmp/mars2-gpu ;;
    fsdp2)
        step mars2_fsdp2 150 $PY "${FSDP2[@]}" recipes/mars2.py "${SMOKE[@]}" --output_dir /tmp/mars2-fsdp2
        step mars2_fsdp2_resume 150 $PY "${FSDP2[@]}" recipes/mars2.py "${SMOKE[@]}" --max_steps 6 \
            --output_dir /tmp/mars2-fsdp2 --resume_from_checkpoint true ;;
    moda) step moda_gpu 400 $PY benchmarks/moda_gpu.py ;;
    vllm)  # ---- vLLM: colocated engines (sleep mode), FSDP2 push to a real server. About 8 minutes (the push needs 2 GPUs).
        if ! $PY -c "import vllm" 2>/dev/null; then
            echo "=== vllm: skipped, the vllm package is not installed (pip install 'trl-mars[vllm]')"
            continue
        fi
        # Two tiny agents 256 wide (head dim 64, which vLLM's attention kernels take), 2 RL steps + held-out eval.
        step mars2_vllm_colocate 420 $PY recipes/mars2.py "${SMOKE[@]}" --max_steps 2 \
            --tiny_hidden_size 256 --use_vllm true --vllm_mode colocate --vllm_enable_sleep_mode true \
            --vllm_gpu_memory_utilization 0.2 --output_dir /tmp/mars2-colocate
        # The server and the trainer join one NCCL group, which refuses two ranks on one GPU: needs 2 GPUs.
        if [ "$(nvidia-smi -L | wc -l)" -lt 2 ]; then
            echo "=== vllm_fsdp2_push: skipped, it needs 2 GPUs (NCCL refuses two ranks of one group on one GPU)"
            continue
        fi
        TINY=$($PY -c "from trl_mars.testing import tiny_model_path as t; print(t('qwen2', hidden_size=256, intermediate_size=512))")
        CUDA_VISIBLE_DEVICES=1 VLLM_SERVER_DEV_MODE=1 timeout 330 trl vllm-serve --model "$TINY" --port 8011 \
            --dtype float32 --gpu_memory_utilization 0.3 --enforce_eager true >"$LOG/vllm_serve.log" 2>&1 &
        SERVER=$!
        CUDA_VISIBLE_DEVICES=0 step vllm_fsdp2_push 300 $PY -m torch.distributed.run --nproc_per_node 1 \
            benchmarks/vllm_weight_push.py --model "$TINY" --base_url http://127.0.0.1:8011 --bucket_mb 0.5
        kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null
        grep -v '^\s*$' "$LOG/vllm_serve.log" | tail -n 5 ;;
    async_search) step async_search_vllm 300 bash -c async_search ;;
    *) echo "unknown check $check" && exit 2 ;;
    esac
done
