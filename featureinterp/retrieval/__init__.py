"""Similarity retrieval over the corpus (paper-method.md section 1.4), on LanceDB.

- ``index``: every row embedded once; exact nearest rows for a feature's query direction.
- ``table``: whether a stored embedding table is whole, and what to do when it is not.
"""
