"""The corpus (paper-method.md section 1.1): documents, tokens, the rows every stage reads.

- ``corpus``: documents from Debian's packaged prose (offline default), a local folder or a
  Hugging Face dataset, tokenized into fixed-length rows with a beginning-of-sequence token.
"""
