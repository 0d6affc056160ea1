#!/usr/bin/env bash
# Regenerates the sample report shown in README: scikit-learn's digits, resnet8, four modes,
# a 4-trial Optuna + ASHA sweep each (8 epochs), the best config reproduced with 2 seeds.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
common=(--dataset digits --model resnet8 --epochs 8 --num-samples 4 --grace-period 2
        --storage "$work/ray_results" --data-dir "$work/data")
for mode in baseline tfkd_self tfkd_reg lsr; do   # baseline first: it registers tfkd_self's teacher
  python tune_main.py --mode "$mode" "${common[@]}"
done
for mode in baseline tfkd_self tfkd_reg lsr; do
  python -m analysis.reproduce --experiment "$mode-digits-resnet8" --seeds 2 --storage "$work/ray_results"
done
python -m analysis.report --out analysis/sample_report
echo "work folder: $work"
