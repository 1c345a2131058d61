"""Mapped potency F1 of the hard preset with ``pp.qc(thresholds="mad")`` on both sides (issue 12).

The pipeline of ``potency_population_mapping.py`` (anchors, defaults, the boundary rule),
except that the reference and the held-out query are QC'd with per-lot MAD thresholds
instead of the fixed ones (200 genes, 20% mitochondrial reads; the default until
2026-12-03, when "mad" became it), which keep most of the simulator's low-quality cells (a
tenth of the counts): they end up in a cluster of their own and their potency cells are
never mapped to the population
(``maptrans_decomposition.md``). F1 of the search's population on the training lots and of
the mapped query cells (scored on the cells QC keeps), against the truth.

    python benchmarks/maptrans_qc_mad.py --seeds 0-9
"""

from __future__ import annotations

import argparse
import warnings

from _truth import population_f1

import mscpotency as mp

mp.settings.progress = False


def one(seed: int) -> dict:
    adata = mp.datasets.hard(random_state=seed)
    query = adata[adata.obs["set"] == "BM-test"].copy()
    ref = adata[adata.obs["set"] == "BM-train"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.pp.qc(ref, thresholds="mad")
        mp.pp.preprocess(ref)
        mp.tl.cluster(ref, n_clusters=8)
        mp.tl.lot_fractions(ref)
        mp.tl.potency_association(ref, "vegf")
        mp.tl.potency_population(ref, "vegf")
        frozen = mp.tl.freeze_reference(ref, cluster_key="potency_population")
        mp.pp.qc(query, thresholds="mad")
        mp.tl.map_to_reference(query, frozen, cluster_key="potency_population")
    population = (ref.obs["potency_population"].astype(str) == "potency").to_numpy()
    mapped = (query.obs["predicted"].astype(str) == "potency").to_numpy()
    return {
        "seed": seed,
        "f1_reference": population_f1(
            population, ref.obs["true_potency_cell"].to_numpy(), digits=3
        ),
        "f1_mapped": population_f1(mapped, query.obs["true_potency_cell"].to_numpy(), digits=3),
        "low_quality_left": int(
            ref.obs["true_low_quality"].sum() + query.obs["true_low_quality"].sum()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-9")
    args = parser.parse_args()
    low, _, high = args.seeds.partition("-")
    for seed in range(int(low), int(high or low) + 1):
        print(one(seed), flush=True)


if __name__ == "__main__":
    main()
