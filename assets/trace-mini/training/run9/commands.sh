# Run 9: run 4 continued on corpus v5 (a relative skin-tone edit writes the scale in the direction of its step, then the tone after the reference's),
# then its test evaluation (from a folder named like the shipped model) and the per-label check.
set -e
. .venv/bin/activate
export PYTHONPATH=.
D=runs/minibeir-v5; FS=.cache/features/minibeir-v3.pt
python -m trace_core.train --data $D --out runs/joint9 --init runs/joint4/model --naming --steps 200 \
    --batch-size 16 --lr 1e-4 --warmup 5 --max-hard-negatives 6 --self-cot-from 1 \
    --group-weights "complex=0.8,image=0.2,emoji_task1=0.7,emoji_task2=1.6,emoji_task8=1.6,naming=0.5" \
    --save-every 25 --feature-store $FS
echo TRAIN_DONE
mkdir -p runs/joint9/trace-mini && cp runs/joint9/model/* runs/joint9/trace-mini/
python -m trace_core.evaluate --mbeir-dir $D --split test --pairs all --model runs/joint9/trace-mini \
    --out runs/test-joint9 --counterfactual
python scripts/v2_val_check.py $D runs/test-joint9 test > runs/test-joint9/test_check.txt 2>&1
echo TEST_DONE
