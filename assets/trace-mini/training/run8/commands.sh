# Run 8: run 4 continued on corpus v4 (relative skin-tone edits take their step in writing in the teacher CoT),
# then its test evaluation (from a folder named like the shipped model) and the per-label check.
set -e
. .venv/bin/activate
export PYTHONPATH=.
D=runs/minibeir-v4; FS=.cache/features/minibeir-v3.pt
python -m trace_core.train --data $D --out runs/joint8 --init runs/joint4/model --naming --steps 150 \
    --batch-size 16 --lr 1e-4 --warmup 5 --max-hard-negatives 6 --self-cot-from 1 \
    --group-weights "complex=0.8,image=0.2,emoji_task1=0.7,emoji_task2=1.3,emoji_task8=1.3,naming=0.5" \
    --save-every 25 --feature-store $FS
echo TRAIN_DONE
mkdir -p runs/joint8/trace-mini && cp runs/joint8/model/* runs/joint8/trace-mini/
python -m trace_core.evaluate --mbeir-dir $D --split test --pairs all --model runs/joint8/trace-mini \
    --out runs/test-joint8 --counterfactual
python scripts/v2_val_check.py $D runs/test-joint8 test > runs/test-joint8/test_check.txt 2>&1
echo TEST_DONE
