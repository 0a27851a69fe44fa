"""Explanations and reading them out of model replies (paper-method.md 4.1, 4.5, 5.4).

- ``rules``: structured rule lists with strengths, or one free-text rule; their JSON schema,
  their parsers and how rules combine into per-token predictions.
- ``replies``: finding JSON in a reply as servers and models really send it (reasoning blocks,
  fences, drafts); knows nothing of rules, so any reply reader can use it.
"""
