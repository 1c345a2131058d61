# The reference analysis of benchmarks/reference_analysis.py (pipeline `ours`) in Seurat 4.3.
#
# Called by benchmarks/_seurat_reference.py, which samples this process's RSS; not meant to be
# run by hand, but it can be:
#
#   Rscript benchmarks/seurat_reference.R <dir> [n_clusters]
#
# <dir> holds the raw counts as a CSC matrix (genes x cells) in raw binary vectors
# (counts_i.bin int32, counts_p.bin int32, counts_x.bin float64, counts_shape.txt "genes cells"),
# the cell names (counts_cells.txt), the gene names (genes.txt) and obs.csv (cell, lot and the
# lot-level potency assay in the third column, e.g. vegf).
# Writes into <dir>:
#   ready.txt      epoch seconds once the libraries are loaded (the caller reads the baseline RSS
#                  between this and the start of `load`)
#   timing.csv     step, start, end (epoch seconds, as.numeric(Sys.time())), after every step
#   running.txt    the step under way and its start (a caller that stops the run reads it)
#   labels.csv     cell, label (the clusters, on the cells kept by QC)
#   result.csv     key, value (cells and genes after QC, resolution, potency cluster, ...)
#   association.csv, markers.csv  the tables behind the potency cluster and its markers
#
# Each step is what a Seurat user writes, with Seurat's defaults where ours has no equivalent:
#   load        readBin + sparseMatrix, CreateSeuratObject(counts) (no min.cells), lot/potency metadata
#   qc          PercentageFeatureSet("^MT-"); nFeature_RNA >= 200 & percent.mt <= 20; genes detected
#               in >= 3 of the kept cells (pp.qc's defaults)
#   preprocess  NormalizeData (LogNormalize, 1e4), FindVariableFeatures (vst, 2000), ScaleData
#               (variable features), RunPCA(npcs = 30)
#   cluster     FindNeighbors(dims = 1:30, k.param = 15) once (annoy, SNN), then FindClusters
#               (Louvain, n.start 10) in a bisection on log(resolution) in [0.01, 5] until
#               n_clusters clusters (at most 30 calls; the bisection of _bare_cluster_search)
#   lot_fractions          prop.table(table(lot, cluster), 1)
#   composition_deviation  log2(lot fraction / pooled fraction)
#   potency_association    cor.test(fraction, potency, method = "spearman") per cluster, BH
#   potency_markers        FindMarkers(ident.1 = potency cluster, wilcox, logfc.threshold = 0,
#                          min.pct = 0): every gene is tested, as ours does
#
# Seurat 4.3's WilcoxDETest uses limma::rankSumTestWithCorrelation only when limma is installed
# AND ncol * ncol does not overflow R's integers (i.e. at most 46,340 cells); above that it falls
# back to one wilcox.test per gene. result.csv says which one ran (findmarkers_limma). Either
# way each gene's row is extracted from the sparse (CSC) matrix one at a time, which dominates
# FindMarkers' time (~0.1 s per gene at 10^4 cells).

now <- function() as.numeric(Sys.time())

suppressPackageStartupMessages({
  library(Matrix)
  library(Seurat)
  library(limma)  # Suggests of Seurat, loaded by FindMarkers; loaded here so the baseline has it
})

args <- commandArgs(trailingOnly = TRUE)
dir <- args[[1]]
n_clusters <- if (length(args) >= 2) as.integer(args[[2]]) else 8L
path <- function(name) file.path(dir, name)
fmt <- function(x) formatC(x, digits = 6, format = "f")

timing <- data.frame(step = character(), start = numeric(), end = numeric())
write_timing <- function() {
  write.csv(data.frame(step = timing$step, start = fmt(timing$start), end = fmt(timing$end)),
            path("timing.csv"), row.names = FALSE, quote = FALSE)
}
# timing.csv is rewritten after every step and running.txt names the step under way, so a
# caller that stops a run past its time limit still knows every finished step and how long
# the unfinished one had run
timed <- function(step, expr) {
  start <- now()
  writeLines(c(step, fmt(start)), path("running.txt"))
  force(expr)
  end <- now()
  timing[nrow(timing) + 1, ] <<- list(step, start, end)
  write_timing()
  message(sprintf("  seurat %-22s %8.2f s", step, end - start))
  invisible(NULL)
}

writeLines(fmt(now()), path("ready.txt"))
Sys.sleep(0.25)  # a quiet window in which the caller samples the baseline RSS

timed("load", {
  shape <- scan(path("counts_shape.txt"), quiet = TRUE)
  nnz <- file.info(path("counts_x.bin"))$size / 8
  counts <- sparseMatrix(
    i = readBin(path("counts_i.bin"), "integer", n = nnz, size = 4),
    p = readBin(path("counts_p.bin"), "integer", n = shape[2] + 1, size = 4),
    x = readBin(path("counts_x.bin"), "double", n = nnz, size = 8),
    dims = shape, index1 = FALSE,
    dimnames = list(readLines(path("genes.txt")), readLines(path("counts_cells.txt")))
  )
  obj <- CreateSeuratObject(counts = counts, project = "reference")
  rm(counts)
  obs <- read.csv(path("obs.csv"), stringsAsFactors = FALSE, check.names = FALSE)
  rownames(obs) <- obs$cell
  obj$lot <- factor(obs[colnames(obj), "lot"])
  obj$potency <- obs[colnames(obj), 3]
})

timed("qc", {
  obj[["percent.mt"]] <- PercentageFeatureSet(obj, pattern = "^MT-")
  obj <- subset(obj, subset = nFeature_RNA >= 200 & percent.mt <= 20)
  detected <- Matrix::rowSums(GetAssayData(obj, slot = "counts") > 0)
  obj <- subset(obj, features = names(detected)[detected >= 3])
})

timed("preprocess", {
  obj <- NormalizeData(obj, normalization.method = "LogNormalize", scale.factor = 1e4, verbose = FALSE)
  obj <- FindVariableFeatures(obj, selection.method = "vst", nfeatures = 2000, verbose = FALSE)
  obj <- ScaleData(obj, verbose = FALSE)
  obj <- RunPCA(obj, npcs = 30, verbose = FALSE)
})

cluster_calls <- 0L
cluster_single_seconds <- NA_real_
resolution <- NA_real_
timed("cluster", {
  obj <- FindNeighbors(obj, dims = 1:30, k.param = 15, verbose = FALSE)
  low <- log(0.01)
  high <- log(5)
  for (iteration in 1:30) {
    resolution <- exp((low + high) / 2)
    start <- now()
    obj <- FindClusters(obj, resolution = resolution, verbose = FALSE)
    cluster_single_seconds <- now() - start
    cluster_calls <- cluster_calls + 1L
    found <- nlevels(droplevels(Idents(obj)))
    if (found == n_clusters) break
    if (found < n_clusters) low <- log(resolution) else high <- log(resolution)
  }
})
clusters <- droplevels(Idents(obj))

timed("lot_fractions", {
  fractions <- prop.table(table(obj$lot, clusters), 1)
})

timed("composition_deviation", {
  pooled <- prop.table(table(clusters))
  deviation <- log2(sweep(pmax(unclass(fractions), 1e-12), 2, as.numeric(pooled), "/"))
})

timed("potency_association", {
  potency <- tapply(obj$potency, obj$lot, function(v) v[[1]])[rownames(fractions)]
  tests <- lapply(colnames(fractions), function(cluster) {
    suppressWarnings(cor.test(fractions[, cluster], potency, method = "spearman"))
  })
  association <- data.frame(
    cluster = colnames(fractions),
    rho = vapply(tests, function(t) unname(t$estimate), numeric(1)),
    pvalue = vapply(tests, function(t) t$p.value, numeric(1))
  )
  association$fdr <- p.adjust(association$pvalue, method = "BH")
  potency_cluster <- association$cluster[which.max(association$rho)]
})

write_result <- function(extra = character()) {
  result <- c(
    seurat_version = as.character(packageVersion("Seurat")),
    n_cells_after_qc = ncol(obj),
    n_genes_after_qc = nrow(obj),
    resolution = format(resolution, digits = 17),
    n_clusters = nlevels(clusters),
    cluster_calls = cluster_calls,
    cluster_single_seconds = fmt(cluster_single_seconds),
    potency_cluster = potency_cluster,
    findmarkers_limma = limma_used,
    extra
  )
  write.csv(data.frame(key = names(result), value = unname(result)), path("result.csv"), row.names = FALSE)
}

# what WilcoxDETest checks before it uses limma (all cells enter the test: ident.1 vs the rest)
limma_used <- requireNamespace("limma", quietly = TRUE) && !is.na(suppressWarnings(ncol(obj) * ncol(obj)))
# everything but the markers is known now: written before FindMarkers starts
write.csv(data.frame(cell = colnames(obj), label = as.character(clusters)), path("labels.csv"), row.names = FALSE)
write.csv(association, path("association.csv"), row.names = FALSE)
write_result()

# verbose left at its default: with verbose = FALSE, WilcoxDETest runs through
# future.apply::future_sapply, which refuses to export the expression matrix once it exceeds
# future.globals.maxSize (500 MiB; ~10^5 cells here); with the default it uses pbsapply (no
# progress bar outside an interactive session)
timed("potency_markers", {
  markers <- FindMarkers(obj, ident.1 = potency_cluster, test.use = "wilcox",
                         logfc.threshold = 0, min.pct = 0)
})

write.csv(cbind(gene = rownames(markers), markers), path("markers.csv"), row.names = FALSE)
write_result(c(top_markers = paste(head(rownames(markers), 5), collapse = ";"), n_genes_tested = nrow(markers)))
