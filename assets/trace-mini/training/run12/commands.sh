# Run 12 (pilot, not shipped): corpus v7 (corpus v6 plus emoji_task1's country knowledge questions, --knowledge),
# then run 10 (the shipped model) continued on it for 200 steps, and its test evaluation (without the always pass).
# About 1 hour on 2 CPU cores alone (build 10 min with the base LM's answers not yet cached, training 27 min,
# test 13 min).
set -e
. .venv/bin/activate
export PYTHONPATH=.
python -m trace_core.minibeir.build --out runs/minibeir-v7 --seed 0 --relative-drill 500 --knowledge \
    --emoji-dir /tmp/npm-src/node_modules/emoji-datasource-google -v
D=runs/minibeir-v7; FS=.cache/features/minibeir-v3.pt
python -m trace_core.train --data $D --out runs/joint12 --init assets/trace-mini --naming --steps 200 \
    --batch-size 16 --lr 1e-4 --warmup 5 --max-hard-negatives 6 --self-cot-from 1 \
    --group-weights "complex=0.8,image=0.2,emoji_task1=2.0,emoji_task2=1.0,emoji_task8=1.0,naming=0.5" \
    --save-every 25 --feature-store $FS
mkdir -p runs/joint12/trace-mini && cp runs/joint12/model/* runs/joint12/trace-mini/
python -m trace_core.evaluate --mbeir-dir $D --split test --pairs all --model runs/joint12/trace-mini \
    --out runs/test-joint12
cp runs/test-joint12/results.json assets/trace-mini/training/run12/test_results.json
python scripts/complex_breakdown.py $D runs/test-joint12 > assets/trace-mini/training/run12/complex_breakdown.txt
