"""Input pipelines: sources, vocabularies, seqio tasks and long-document batching.

Modules (import what you need; only `tasks`, `pipeline` and `vocabularies`
pull in TensorFlow, so a trainer that reads a prepared `DocumentSet` stays light):

- `documents`  tokenized documents of a split as one flat array plus offsets.
- `batching`   `LongDocBatcher`: B rows each reading documents in segments.
- `metrics`    bits per token / byte and word-level perplexity.
- `text_dirs`  local PG19-layout directories (one `.txt` per document).
- `code_repos` local GitHub-style repositories, one document per repository.
- `vocabularies` byte and SentencePiece vocabularies.
- `tasks`      seqio task registration and `get_documents(task, split)`.
- `pipeline`   `train_batches` / `eval_batches` by task name, for the trainer.
- `demo_corpora` the offline Gutenberg-plays and stdlib-code corpora.
"""
