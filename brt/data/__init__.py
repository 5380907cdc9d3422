"""Input pipelines: sources, vocabularies, seqio tasks, long-document batches.

Modules (import what you need; only `tasks`, `pipeline` and `vocabularies`
pull in TensorFlow, so code that only batches a `DocumentSet` stays light):

- `documents`    tokenized documents of a split: one flat array plus offsets.
- `batching`     `LongDocBatcher`: B rows each reading documents in segments.
- `metrics`      bits per token / byte and word-level perplexity.
- `local_files`  local PG19-layout directories (one `.txt` per document).
- `code_repos`   GitHub-style repositories, one document per repository
                 (`ignore_rules` holds its `.gitignore` matcher).
- `vocabularies` byte and SentencePiece vocabularies.
- `tasks`        seqio task registration and `get_documents(task, split)`.
- `pipeline`     `train_batches` / `eval_batches` by task name.
- `demo_corpora` the offline Gutenberg-plays and stdlib-code corpora.
"""
