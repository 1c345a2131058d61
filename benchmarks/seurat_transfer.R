# Seurat 4.x label transfer (FindTransferAnchors + TransferData), as in the reference study.
#
# Called by benchmarks/mapping_vs_seurat.py; not meant to be run by hand, but it can be:
#
#   Rscript benchmarks/seurat_transfer.R <data_dir> <out_dir> [k_filter] [mapping_score]
#
# <data_dir> holds, for the reference and every query set, a CSC count matrix written by the
# Python side as raw binary vectors (<name>_i.bin int32, <name>_p.bin int32, <name>_x.bin
# float64, <name>_shape.txt "genes cells"), gene names (genes.txt), cell names
# (<name>_cells.txt), the reference labels (reference_labels.txt) and the query set names
# (sets.txt). Writes <out_dir>/seurat_<set>.csv (cell, predicted.id, prediction.score.max)
# and <out_dir>/seurat_timing.csv (step, set, seconds). With mapping_score "TRUE", each
# set's csv also has mapping.score: Seurat's MappingScore(anchors, ndim = 30), its other
# arguments default (its default ndim, 50, exceeds the 30 dims the anchors were found in and
# fails with "subscript out of bounds"); NA, with the error in the log, where MappingScore
# fails. Its seconds are not in "map".
#
# Parameters are Seurat's defaults as the study used them: LogNormalize (scale.factor 1e4),
# 2,000 vst features, ScaleData, 30 PCs; FindTransferAnchors(reduction = "pcaproject",
# dims = 1:30, k.anchor = 5, k.filter = 200, k.score = 30); TransferData(dims = 1:30,
# k.weight = 50). k_filter "NA" skips anchor filtering (Seurat 5's default, the fast setting).

suppressPackageStartupMessages({
  library(Matrix)
  library(Seurat)
})

args <- commandArgs(trailingOnly = TRUE)
data_dir <- args[[1]]
out_dir <- args[[2]]
k_filter <- if (length(args) < 3) 200 else if (args[[3]] == "NA") NA else as.numeric(args[[3]])
with_mapping_score <- length(args) >= 4 && args[[4]] == "TRUE"
dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)

read_counts <- function(name, genes) {
  shape <- scan(file.path(data_dir, paste0(name, "_shape.txt")), quiet = TRUE)
  nnz <- file.info(file.path(data_dir, paste0(name, "_x.bin")))$size / 8
  i <- readBin(file.path(data_dir, paste0(name, "_i.bin")), "integer", n = nnz, size = 4)
  p <- readBin(file.path(data_dir, paste0(name, "_p.bin")), "integer", n = shape[2] + 1, size = 4)
  x <- readBin(file.path(data_dir, paste0(name, "_x.bin")), "double", n = nnz, size = 8)
  cells <- readLines(file.path(data_dir, paste0(name, "_cells.txt")))
  sparseMatrix(i = i, p = p, x = x, dims = shape, index1 = FALSE, dimnames = list(genes, cells))
}

timing <- data.frame(step = character(), set = character(), seconds = numeric())
elapsed <- function(start) as.numeric(difftime(Sys.time(), start, units = "secs"))

genes <- readLines(file.path(data_dir, "genes.txt"))
sets <- readLines(file.path(data_dir, "sets.txt"))

start <- Sys.time()
reference <- CreateSeuratObject(read_counts("reference", genes), project = "reference")
reference$label <- readLines(file.path(data_dir, "reference_labels.txt"))
reference <- NormalizeData(reference, normalization.method = "LogNormalize", scale.factor = 1e4, verbose = FALSE)
reference <- FindVariableFeatures(reference, selection.method = "vst", nfeatures = 2000, verbose = FALSE)
reference <- ScaleData(reference, verbose = FALSE)
reference <- RunPCA(reference, npcs = 30, verbose = FALSE, seed.use = 42)
timing <- rbind(timing, data.frame(step = "reference", set = "", seconds = elapsed(start)))

for (set in sets) {
  query <- CreateSeuratObject(read_counts(paste0("query_", set), genes), project = set)
  start <- Sys.time()
  query <- NormalizeData(query, normalization.method = "LogNormalize", scale.factor = 1e4, verbose = FALSE)
  anchors <- FindTransferAnchors(
    reference = reference, query = query, reduction = "pcaproject", dims = 1:30,
    k.anchor = 5, k.filter = k_filter, k.score = 30, verbose = FALSE
  )
  predictions <- TransferData(anchorset = anchors, refdata = reference$label, dims = 1:30, k.weight = 50, verbose = FALSE)
  seconds <- elapsed(start)
  timing <- rbind(timing, data.frame(step = "map", set = set, seconds = seconds))
  out <- data.frame(cell = rownames(predictions), predicted.id = predictions$predicted.id,
                    prediction.score.max = predictions$prediction.score.max)
  if (with_mapping_score) {
    start <- Sys.time()
    score <- tryCatch(
      MappingScore(anchors = anchors, ndim = 30, verbose = FALSE),  # ndim = dims,
      error = function(e) {
        message(sprintf("MappingScore failed on %s: %s", set, conditionMessage(e)))
        NULL
      }
    )
    out$mapping.score <- if (is.null(score)) NA_real_ else unname(score[out$cell])
    timing <- rbind(timing, data.frame(step = "mapping_score", set = set, seconds = elapsed(start)))
  }
  write.csv(out, file.path(out_dir, paste0("seurat_", set, ".csv")), row.names = FALSE)
  message(sprintf("Seurat %s: %d cells in %.1f s", set, ncol(query), seconds))
}
write.csv(timing, file.path(out_dir, "seurat_timing.csv"), row.names = FALSE)
cat(as.character(packageVersion("Seurat")), "\n", file = file.path(out_dir, "seurat_version.txt"))
