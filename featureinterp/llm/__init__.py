"""Talking to language models: the one backend interface and its implementations.

The explainers, the complexity rater and the LLM scorers speak to a ``ChatBackend``
(``backend``); nothing here knows of explanations, records or features.

- ``backend``: the interface (chat completions, prompt scoring) and its value types.
- ``local``, ``chat``, ``speculative``: a local transformers model with grammar-constrained JSON,
  chat templates that every model accepts, speculative decoding.
- ``api``, ``api_capabilities``, ``api_replies``: any OpenAI-compatible server, with our own
  retries, what a server accepts (learned from its rejections), and reading its replies.
- ``server``, ``server_requests``: serving a backend over the OpenAI protocol on a local port.
- ``memory``: fewer glibc malloc arenas for the explain stage's threads.
"""
