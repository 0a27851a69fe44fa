"""Group, pool and tag names shared by the Dagster layer."""

GROUP_CORPUS = "corpus"
GROUP_ACTIVATIONS = "activations"
GROUP_RECORDS = "records"

POOL_GPU = "gpu"
"""Concurrency pool of steps that hold the subject model; set its limit to the number of GPUs."""

STORAGE_IO = "storage"
"""IO manager key of the array/JSON store under $FEATUREINTERP_HOME/storage/<preset>."""
GROUP_EXPLANATIONS = "explanations"

POOL_LLM_API = "llm_api"
"""Concurrency pool of steps that call a remote explainer API (limit = requests you can afford)."""
GROUP_FIGURES = "figures"
