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
# Shipping run 10 (runs/stage18.sh, then the int8 check; about 1.5 h): its lambda_gen = 0 ablation (run 4's
# ablation, runs/trace-mini-nogen, continued with the same 200 steps without the CoT loss; log in
# ../../ablation-nogen/run10_train_log.jsonl), the weights into assets/trace-mini, the evidence report (reusing
# the test run above and the unchanged zero-shot baseline run), the app's shipped caches.
python -m trace_core.train --data $D --out runs/joint10-nogen --init runs/trace-mini-nogen --naming --steps 200 \
    --batch-size 16 --lr 1e-4 --warmup 5 --max-hard-negatives 6 --self-cot-from 1 \
    --group-weights "complex=0.8,image=0.2,emoji_task1=0.7,emoji_task2=1.6,emoji_task8=1.6,naming=0.5" \
    --save-every 25 --feature-store $FS --lambda-gen 0
cp runs/joint10/model/config.json runs/joint10/model/trace_mini.safetensors runs/joint10/model/trace_style.json assets/trace-mini/
mkdir -p runs/trace-mini-nogen10 && cp runs/joint10-nogen/model/* runs/trace-mini-nogen10/
W=runs/report-v4; mkdir -p $W
cp -r runs/test-joint10 $W/TRACE-mini-auto
cp -r runs/report-v2/baseline $W/baseline
python -m trace_core.minibeir.report --model assets/trace-mini --data assets/minibeir \
    --ablation runs/trace-mini-nogen10 --baseline minilm-bridge --work $W --reuse --out assets/trace-mini
python -m app.ship
python -m trace_core.evaluate --mbeir-dir assets/minibeir --split test --pairs all --model assets/trace-mini \
    --precision int8 --out runs/test-int8-10   # the int8 check of that day (output head only)
# 2026-12-04: every LM weight in int8, the app's new default (../../precision-int8/README.md), and its caches:
python -m trace_core.evaluate --mbeir-dir assets/minibeir --split test --pairs all --model assets/trace-mini \
    --precision int8 --counterfactual --out runs/test-int8cf   # -> ../../precision-int8/
python -m app.ship   # builds assets/cache for int8 (the app's default precision)
# 2026-12-04, later: the same evaluation decoded with the fused step (trace_core/backbones/fused_decode.py, the
# app's decoding since then; 6 of 1,175 CoTs differ), and the caches again (the map reads its query embeddings):
python -m trace_core.evaluate --mbeir-dir assets/minibeir --split test --pairs all --model assets/trace-mini \
    --precision int8 --counterfactual --out runs/test-int8cf-fused   # -> ../../precision-int8/
python -m app.ship
# 2026-12-04, evening: the fused step's int8 products became int8 x int16 integer dot products (VNNI); the same
# evaluation again (9 of 1,175 CoTs differ from the one above, no route), and the caches:
python -m trace_core.evaluate --mbeir-dir assets/minibeir --split test --pairs all --model assets/trace-mini \
    --precision int8 --counterfactual --out runs/test-int8cf-vnni   # -> ../../precision-int8/
python -m app.ship
