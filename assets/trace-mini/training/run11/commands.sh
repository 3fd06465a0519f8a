# Run 11: run 10's corpus (v6) and recipe plus the gloss drill (--glosses 1000: 946 definition questions about common
# WordNet nouns that no candidate names, CoT loss alone), from run 4; then its test evaluation and the per-label check.
# Corpus v6: see run10/commands.sh. About 50 minutes on 2 CPU cores alone.
set -e
. .venv/bin/activate
export PYTHONPATH=.
D=runs/minibeir-v6; FS=.cache/features/minibeir-v3.pt
python -m trace_core.train --data $D --out runs/joint11 --init runs/joint4/model --naming --steps 200 \
    --batch-size 16 --lr 1e-4 --warmup 5 --max-hard-negatives 6 --self-cot-from 1 \
    --group-weights "complex=0.8,image=0.2,emoji_task1=0.7,emoji_task2=1.6,emoji_task8=1.6,naming=0.5,glosses=0.7" \
    --glosses 1000 --save-every 25 --feature-store $FS
echo TRAIN_DONE
mkdir -p runs/joint11/trace-mini && cp runs/joint11/model/* runs/joint11/trace-mini/
python -m trace_core.evaluate --mbeir-dir $D --split test --pairs all --model runs/joint11/trace-mini \
    --out runs/test-joint11 --counterfactual
python scripts/v2_val_check.py $D runs/test-joint11 test > runs/test-joint11/test_check.txt 2>&1
echo TEST_DONE
