"""Write reference_lengths.json: sample lengths shaped like ../shared/GPU.md's reference (median 270, mean 307).

GPU.md's naive figures were measured on samples of median 270 and mean 307 tokens; its samples themselves are not
available, so this draws a log-normal with that median and mean (sigma = sqrt(2 ln(307/270)) = 0.507) and gives each
sample the label share of the real training mix (37.6% of tokens, experiments/efficiency/lengths.json).

    python experiments/efficiency/make_reference_lengths.py
"""

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
MEDIAN, MEAN, N, LABEL_SHARE, SEED = 270, 307, 20_000, 0.376, 0


def main() -> None:
    """Draw the lengths and write the joint histogram the benchmark samples from."""
    sigma = math.sqrt(2 * math.log(MEAN / MEDIAN))
    rng = np.random.default_rng(SEED)
    totals = np.clip(np.round(rng.lognormal(math.log(MEDIAN), sigma, N)), 8, 2048).astype(int)
    pairs = Counter((int(t), max(1, round(LABEL_SHARE * t))) for t in totals)
    out = {
        "what": "synthetic lengths shaped like GPU.md's reference samples (median 270, mean 307 tokens)",
        "total_len": {"mean": float(totals.mean()), "median": float(np.median(totals))},
        "joint": [[t, lab, c] for (t, lab), c in sorted(pairs.items())],
    }
    (HERE / "reference_lengths.json").write_text(json.dumps(out))
    print(out["total_len"])


if __name__ == "__main__":
    main()
