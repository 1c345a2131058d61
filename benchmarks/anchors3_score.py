"""Score a saved ``anchors3_scale_run.py`` result against the simulator's truth.

Usage: ``.venv/bin/python benchmarks/anchors3_score.py SCRATCH OUT.npz [POTENCY_CLUSTER]``
(potency cluster: ``prepare.json`` of the scratch, ``CL5`` for ``mapping_scale.py --cells
100000``). Prints ``mapping_vs_seurat.score``: potency-like F1, accuracy, ECE, lot shares.
"""

import sys

import anndata as ad
import numpy as np
import pandas as pd
from mapping_vs_seurat import score


def main() -> None:
    scratch, path = sys.argv[1], sys.argv[2]
    potency = sys.argv[3] if len(sys.argv) > 3 else "CL5"
    backed = ad.read_h5ad(scratch + "/reference.h5ad", backed="r")
    reference = ad.AnnData(obs=backed.obs.copy())
    backed.file.close()
    saved = np.load(path, allow_pickle=True)
    obs = pd.DataFrame({key: saved[key] for key in ("lot", "true_subpopulation")})
    for key in ("true_low_quality", "true_potency_cell"):
        obs[key] = saved[key].astype(bool)
    metrics = score(
        reference,
        ad.AnnData(obs=obs),
        saved["predicted"].astype(str),
        saved["predicted_score"].astype(float),
        potency,
    )
    print({name: round(float(value), 4) for name, value in metrics.items()})


if __name__ == "__main__":
    main()
