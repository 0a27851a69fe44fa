"""featureinterp: explain and falsify sparse-autoencoder features (plain library, no Dagster).

Stages follow the paper "Revising and Falsifying Sparse Autoencoder Feature Explanations":
corpus -> SAE activations -> holistic activations -> records -> explanations -> simulation scores.
"""

__version__ = "0.1.0"
