# Run 10: corpus v6 (corpus v3 plus 500 relative skin-tone edits per edit pair, training split only), then run 4
# continued on it, its test evaluation (from a folder named like the shipped model) and the per-label check.
# About 50 minutes on 2 CPU cores alone.
set -e
. .venv/bin/activate
export PYTHONPATH=.
python -m trace_core.minibeir.build --out runs/minibeir-v6 --seed 0 --relative-drill 500 \
    --emoji-dir /tmp/npm-src/node_modules/emoji-datasource-google
D=runs/minibeir-v6; FS=.cache/features/minibeir-v3.pt
python -m trace_core.train --data $D --out runs/joint10 --init runs/joint4/model --naming --steps 200 \
    --batch-size 16 --lr 1e-4 --warmup 5 --max-hard-negatives 6 --self-cot-from 1 \
    --group-weights "complex=0.8,image=0.2,emoji_task1=0.7,emoji_task2=1.6,emoji_task8=1.6,naming=0.5" \
    --save-every 25 --feature-store $FS
echo TRAIN_DONE
mkdir -p runs/joint10/trace-mini && cp runs/joint10/model/* runs/joint10/trace-mini/
python -m trace_core.evaluate --mbeir-dir $D --split test --pairs all --model runs/joint10/trace-mini \
    --out runs/test-joint10 --counterfactual
python scripts/v2_val_check.py $D runs/test-joint10 test > runs/test-joint10/test_check.txt 2>&1
echo TEST_DONE
