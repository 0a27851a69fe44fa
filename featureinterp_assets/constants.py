"""Group, pool and tag names shared by the Dagster layer."""

GROUP_CORPUS = "corpus"
GROUP_ACTIVATIONS = "activations"
GROUP_RECORDS = "records"

POOL_GPU = "gpu"
"""Concurrency pool of steps that hold the subject model; set its limit to the number of GPUs."""

STORAGE_IO = "storage"
"""IO manager key of the array/JSON store under $FEATUREINTERP_HOME/storage/<preset>."""
GROUP_EXPLANATIONS = "explanations"

GROUP_FIGURES = "figures"
