"""seqio tasks for PG19, arXiv and GitHub-style code, and their documents.

Data directories are known only at run time, so tasks are registered by
plain keyword-driven functions (gin can bind them) rather than at import:

    name = register_pg19_local(data_dir="data/pg19", vocabulary="spm")
    docs = get_documents(name, "validation")   # a DocumentSet

`vocabulary` is "bytes", "spm" (trained on the training split, cached under
`<data_dir>/vocab/`) or the path of an existing SentencePiece `.model`.
Every task yields whole documents: `targets` (tokens, EOS appended),
`targets_pretokenized` (the text) and `doc_id`. Cutting documents into
segments is the batcher's job, not seqio's, because segments of one document
must stay in order in one batch row.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import seqio
import tensorflow as tf

from brt.data import code_repos, local_files, metrics, synthetic, vocabularies
from brt.data.documents import DocumentSet, DocumentSetWriter

log = logging.getLogger(__name__)

SPLITS = local_files.SPLITS
# tfds names with pinned versions, so a cache of tokens never mixes versions.
PG19_TFDS = "pg19:0.1.1"
ARXIV_TFDS = "scientific_papers/arxiv:1.1.1"

# Bump when readers change what documents they produce from the same files,
# so that cached tokens are rebuilt.
READER_VERSION = 2
# Where get_documents caches a task's tokens (None: no cache).
_TOKEN_CACHE_DIRS: dict[str, Optional[str]] = {}
# Cheap identity of each task's local data, part of the token cache key.
_DATA_FINGERPRINTS: dict[str, Callable[[str], str]] = {}

Reader = Callable[[str, str], Iterator[tuple[str, str]]]


# --- vocabularies -------------------------------------------------------------


def vocabulary_tag(vocabulary: str) -> str:
  """The task-name suffix for a vocabulary spec."""
  if vocabulary in ("bytes", "spm"):
    return vocabulary
  stem = os.path.splitext(os.path.basename(vocabulary))[0]
  return "spm_" + re.sub(r"\W+", "_", stem).lower()


def resolve_vocabulary(vocabulary: str, *, data_dir: Optional[str] = None,
                       reader: Optional[Reader] = None,
                       spm_vocab_size: int = 32000, spm_seed: int = 0,
                       reader_settings: str = "") -> seqio.Vocabulary:
  """A seqio vocabulary for "bytes", "spm" (trained here) or a model path.

  `reader_settings` describes how `reader` turns files into documents; it is
  part of the cached model's fingerprint.
  """
  if vocabulary == "bytes":
    return vocabularies.byte_vocabulary()
  if vocabulary == "spm":
    if data_dir is None or reader is None:
      raise ValueError(
          "vocabulary='spm' trains on a local training split; for this task "
          "give the path of an existing SentencePiece .model instead.")
    train_dir = local_files.split_dir(data_dir, "train")
    return vocabularies.cached_sentencepiece(
        os.path.join(data_dir, "vocab"), spm_vocab_size,
        lambda: (text for _, text in reader(data_dir, "train")),
        seed=spm_seed, fingerprint=_hash(
            reader_settings, vocabularies.split_fingerprint(train_dir)))
  if vocabulary.endswith(".model") or os.path.exists(vocabulary):
    return vocabularies.sentencepiece_vocabulary(vocabulary)
  raise ValueError(f"Unknown vocabulary {vocabulary!r}: use 'bytes', 'spm' "
                   "or the path of a SentencePiece .model file.")


# --- sources ------------------------------------------------------------------


class LocalSource(seqio.FunctionDataSource):
  """A seqio source of {"text", "doc_id"} from a local split directory.

  Errors raised while reading (an empty split, say) reach Python wrapped in
  a TensorFlow error; the original is kept in `errors` so `get_documents`
  can raise it as it was.
  """

  def __init__(self, data_dir: str, reader: Reader):
    self.errors: list[BaseException] = []

    def dataset_fn(split: str, shuffle_files: bool, seed=None):
      # Documents come in name order; shuffling is done per epoch by the
      # batcher, with a seed, over whole documents.
      del shuffle_files, seed
      local_files.split_dir(data_dir, split)  # a missing split fails here
      def generate():
        try:
          for name, text in reader(data_dir, split):
            yield {"text": text, "doc_id": name}
        except Exception as e:
          self.errors.append(e)
          raise
      return tf.data.Dataset.from_generator(
          generate, output_signature={
              "text": tf.TensorSpec([], tf.string),
              "doc_id": tf.TensorSpec([], tf.string)})

    super().__init__(dataset_fn, splits=SPLITS, caching_permitted=False)


def register_task(name: str, source: seqio.DataSource,
                  vocabulary: seqio.Vocabulary, *, text_key: str = "text",
                  id_key: Optional[str] = "doc_id", add_eos: bool = True,
                  token_cache_dir: Optional[str] = None) -> str:
  """Registers (or re-registers) a whole-document language-model task."""
  key_map = {"targets": text_key}
  if id_key:
    key_map["doc_id"] = id_key
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=[
          functools.partial(seqio.preprocessors.rekey, key_map=key_map),
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos,
      ],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=add_eos,
                                                dtype=tf.int32)})
  _TOKEN_CACHE_DIRS[name] = token_cache_dir
  _DATA_FINGERPRINTS.pop(name, None)  # a local registration sets its own
  _SYNTHETIC.pop(name, None)  # a synthetic registration sets its own
  return name


def _register_local(base: str, data_dir: str, reader: Reader, vocabulary: str,
                    spm_vocab_size: int, spm_seed: int, add_eos: bool,
                    name: Optional[str]) -> str:
  data_dir = os.path.abspath(data_dir)
  local_files.split_dir(data_dir, "train")  # fail early with a clear error
  # Cached tokens and models must change when the files, or what the reader
  # makes of them (filters, limits, EOS), change.
  settings = repr((READER_VERSION, add_eos, getattr(reader, "keywords", None)))
  vocab = resolve_vocabulary(vocabulary, data_dir=data_dir, reader=reader,
                             spm_vocab_size=spm_vocab_size, spm_seed=spm_seed,
                             reader_settings=settings)
  name = name or f"{base}_{vocabulary_tag(vocabulary)}"
  register_task(name, LocalSource(data_dir, reader), vocab, add_eos=add_eos,
                token_cache_dir=os.path.join(data_dir, "tokens"))
  _DATA_FINGERPRINTS[name] = lambda split: _hash(
      settings, vocabularies.split_fingerprint(
          local_files.split_dir(data_dir, split)))
  return name


def _hash(*parts: str) -> str:
  return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def register_pg19_local(data_dir: str, *, vocabulary: str = "bytes",
                        spm_vocab_size: int = 32000, spm_seed: int = 0,
                        add_eos: bool = True, name: Optional[str] = None
                        ) -> str:
  """PG19 from a local directory: `{train,validation,test}/*.txt`, one book
  per file. Task `pg19_local_<vocab>`; returns its name."""
  return _register_local("pg19_local", data_dir, local_files.read_text_split,
                         vocabulary, spm_vocab_size, spm_seed, add_eos, name)


def register_arxiv_local(data_dir: str, *, vocabulary: str = "bytes",
                         spm_vocab_size: int = 32000, spm_seed: int = 0,
                         add_eos: bool = True, name: Optional[str] = None
                         ) -> str:
  """arXiv articles as local text files, one per article, in PG19's layout.
  Task `arxiv_local_<vocab>`."""
  return _register_local("arxiv_local", data_dir, local_files.read_text_split,
                         vocabulary, spm_vocab_size, spm_seed, add_eos, name)


def register_github_local(data_dir: str, *, vocabulary: str = "bytes",
                          extensions: Optional[Iterable[str]] = None,
                          max_file_bytes: Optional[int] = 1 << 20,
                          max_repo_bytes: Optional[int] = None,
                          spm_vocab_size: int = 32000, spm_seed: int = 0,
                          add_eos: bool = True, name: Optional[str] = None,
                          base: str = "github_local") -> str:
  """Code repositories under `{train,validation,test}/<repo>/`, one document
  per repository (see `code_repos`). Task `<base>_<vocab>`."""
  reader = functools.partial(
      code_repos.read_code_split,
      extensions=tuple(extensions) if extensions is not None else None,
      max_file_bytes=max_file_bytes, max_repo_bytes=max_repo_bytes)
  return _register_local(base, data_dir, reader, vocabulary, spm_vocab_size,
                         spm_seed, add_eos, name)


def register_gutenberg_plays(data_dir: str = "data/gutenberg_plays", *,
                             vocabulary: str = "bytes",
                             spm_vocab_size: int = 4096,
                             add_eos: bool = True) -> str:
  """The offline demo corpus (`scripts/prepare_data.sh`), PG19 layout.
  Task `gutenberg_plays_<vocab>`."""
  return _register_local("gutenberg_plays", data_dir,
                         local_files.read_text_split, vocabulary,
                         spm_vocab_size, 0, add_eos, None)


def register_stdlib_code(data_dir: str = "data/stdlib_code", *,
                         vocabulary: str = "bytes", spm_vocab_size: int = 4096,
                         add_eos: bool = True) -> str:
  """The offline code corpus: Python's standard library, one document per
  module or package. Task `stdlib_code_<vocab>`."""
  return register_github_local(data_dir, vocabulary=vocabulary,
                               extensions=(".py",), max_file_bytes=1 << 20,
                               spm_vocab_size=spm_vocab_size, add_eos=add_eos,
                               base="stdlib_code")


def _tfds_vocabulary(vocabulary: str) -> seqio.Vocabulary:
  return resolve_vocabulary(vocabulary)  # "spm" needs local text: refused


def _tfds_token_cache(token_cache_dir, tfds_data_dir):
  # PG19's training split does not fit in memory as Python lists: cache its
  # tokens on disk beside the tfds data unless told otherwise.
  if token_cache_dir is None and tfds_data_dir is not None:
    return os.path.join(tfds_data_dir, "brt_tokens")
  return token_cache_dir


def register_pg19_tfds(*, vocabulary: str = "bytes",
                       tfds_data_dir: Optional[str] = None,
                       token_cache_dir: Optional[str] = None,
                       add_eos: bool = True, name: Optional[str] = None
                       ) -> str:
  """PG19 through tfds (downloads from its public bucket on first use).
  Task `pg19_<vocab>`."""
  source = seqio.TfdsDataSource(tfds_name=PG19_TFDS,
                                tfds_data_dir=tfds_data_dir)
  token_cache_dir = _tfds_token_cache(token_cache_dir, tfds_data_dir)
  return register_task(name or f"pg19_{vocabulary_tag(vocabulary)}", source,
                       _tfds_vocabulary(vocabulary), text_key="book_text",
                       id_key="book_title", add_eos=add_eos,
                       token_cache_dir=token_cache_dir)


def register_arxiv_tfds(*, vocabulary: str = "bytes",
                        tfds_data_dir: Optional[str] = None,
                        token_cache_dir: Optional[str] = None,
                        add_eos: bool = True, name: Optional[str] = None
                        ) -> str:
  """arXiv article bodies from tfds `scientific_papers/arxiv`.
  Task `arxiv_<vocab>`."""
  source = seqio.TfdsDataSource(tfds_name=ARXIV_TFDS,
                                tfds_data_dir=tfds_data_dir)
  token_cache_dir = _tfds_token_cache(token_cache_dir, tfds_data_dir)
  return register_task(name or f"arxiv_{vocabulary_tag(vocabulary)}", source,
                       _tfds_vocabulary(vocabulary), text_key="article",
                       id_key=None, add_eos=add_eos,
                       token_cache_dir=token_cache_dir)


# --- synthetic long-range tasks ----------------------------------------------

# Task name -> its generator config; their documents carry answer masks.
_SYNTHETIC: dict[str, synthetic.TaskConfig] = {}


def register_synthetic(cfg: synthetic.TaskConfig, name: str) -> str:
  """A seqio task whose documents `synthetic.generate` makes on the fly
  (bytes vocabulary); `get_documents` attaches their answer masks."""
  if (data_dir := synthetic.data_dir_of(cfg)) is not None:
    local_files.split_dir(data_dir, "train")  # fail early with a clear error

  def dataset_fn(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed  # Deterministic per (cfg.seed, split, index).
    def generate():
      for i in range(synthetic.num_documents(cfg, split)):
        yield {"text": synthetic.generate(cfg, split, i)[0],
               "doc_id": f"{split}_{i}"}
    return tf.data.Dataset.from_generator(
        generate, output_signature={
            "text": tf.TensorSpec([], tf.string),
            "doc_id": tf.TensorSpec([], tf.string)})

  source = seqio.FunctionDataSource(dataset_fn, splits=SPLITS,
                                    caching_permitted=False)
  register_task(name, source, vocabularies.byte_vocabulary())
  _SYNTHETIC[name] = cfg
  return name


def register_copy(*, distance: int = 80, length: int = 6, max_lead: int = 8,
                  num_documents: int = 2048, num_eval_documents: int = 256,
                  seed: int = 0, name: Optional[str] = None) -> str:
  """Copy a random string `distance` tokens later. Task `copy_d<distance>`."""
  cfg = synthetic.CopyConfig(distance=distance, length=length,
                             max_lead=max_lead, num_documents=num_documents,
                             num_eval_documents=num_eval_documents, seed=seed)
  return register_synthetic(cfg, name or f"copy_d{distance}")


def register_retrieval(*, distance: int = 80, num_pairs: int = 4,
                       max_lead: int = 8, num_documents: int = 2048,
                       num_eval_documents: int = 256, seed: int = 0,
                       name: Optional[str] = None) -> str:
  """Associative retrieval: key->value pairs queried `distance` tokens
  later. Task `retrieval_d<distance>`."""
  cfg = synthetic.RetrievalConfig(
      distance=distance, num_pairs=num_pairs, max_lead=max_lead,
      num_documents=num_documents, num_eval_documents=num_eval_documents,
      seed=seed)
  return register_synthetic(cfg, name or f"retrieval_d{distance}")


def register_passkey(data_dir: str = "data/gutenberg_plays", *,
                     distance: int = 80, digits: int = 5, max_lead: int = 16,
                     num_documents: int = 2048, num_eval_documents: int = 256,
                     seed: int = 0, name: Optional[str] = None) -> str:
  """A pass key hidden in book text (PG19 layout), asked for `distance`
  tokens later. Task `passkey_d<distance>`."""
  cfg = synthetic.PasskeyConfig(
      data_dir=os.path.abspath(data_dir), distance=distance, digits=digits,
      max_lead=max_lead, num_documents=num_documents,
      num_eval_documents=num_eval_documents, seed=seed)
  return register_synthetic(cfg, name or f"passkey_d{distance}")


def _attach_answer_masks(task_name: str, split: str, docs: DocumentSet):
  cfg = _SYNTHETIC[task_name]
  masks = [synthetic.answer_mask(cfg, split, int(name.rsplit("_", 1)[1]),
                                 len(docs[i]))
           for i, name in enumerate(docs.names)]
  docs.answer_mask = (np.concatenate(masks) if masks
                      else np.zeros(0, np.uint8))


# --- documents ----------------------------------------------------------------


def iter_documents(task_name: str, split: str
                   ) -> Iterator[tuple[str, np.ndarray, str]]:
  """(name, tokens, text) for each document of a split, in source order."""
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False,
                        num_epochs=1, use_cached=False,
                        try_in_mem_cache=False)  # one pass; keep memory low
  errors = getattr(task.source, "errors", [])
  del errors[:]
  try:
    for i, ex in enumerate(ds.as_numpy_iterator()):
      name = ex["doc_id"].decode("utf-8") if "doc_id" in ex else str(i)
      yield name, ex["targets"], ex["targets_pretokenized"].decode("utf-8")
  except tf.errors.OpError:
    if errors:
      raise errors[-1] from None
    raise


def get_documents(task_name: str, split: str, *,
                  cache_dir: Optional[str] = "default",
                  max_unk_fraction: float = 1e-3) -> DocumentSet:
  """The tokenized documents of a split of a registered task.

  Tokens are cached under `cache_dir` ("default": the directory chosen when
  the task was registered, `<data_dir>/tokens/` for local data; None: no
  cache), keyed by task, split, vocabulary and the split's file listing, and
  memory-mapped when loaded, so a run starts in seconds after the first.

  Raises VocabularyCoverageError if more than `max_unk_fraction` of the
  tokens are unknown to the vocabulary.
  """
  task = seqio.get_mixture_or_task(task_name)
  vocab = task.output_features["targets"].vocabulary
  if cache_dir == "default":
    cache_dir = _TOKEN_CACHE_DIRS.get(task_name)
  what = f"split {split!r} of task {task_name!r}"
  if cache_dir is not None and not _writable(cache_dir):
    log.warning("Not caching tokens: %s is not writable.", cache_dir)
    cache_dir = None
  if cache_dir is None:
    names, arrays, n_bytes, n_words = [], [], [], []
    for name, tokens, text in iter_documents(task_name, split):
      names.append(name)
      arrays.append(tokens)
      n_bytes.append(metrics.count_utf8_bytes(text))
      n_words.append(metrics.count_words(text))
    docs = DocumentSet.from_token_lists(arrays, vocab.vocab_size, names=names,
                                        num_bytes=n_bytes, num_words=n_words)
  else:
    fingerprint = _DATA_FINGERPRINTS.get(task_name, lambda s: "")(split)
    key = "-".join(p for p in (task_name, split,
                               vocabularies.describe(vocab), fingerprint) if p)
    path = os.path.join(cache_dir, key)
    if not DocumentSet.exists(path):
      log.info("Tokenizing %s into %s", what, path)
      with DocumentSetWriter(path, vocab.vocab_size) as writer:
        for name, tokens, text in iter_documents(task_name, split):
          writer.add(tokens, name, metrics.count_utf8_bytes(text),
                     metrics.count_words(text))
    docs = DocumentSet.load(path)
  vocabularies.check_coverage(docs.tokens, vocab, max_unk_fraction, what)
  if task_name in _SYNTHETIC:
    _attach_answer_masks(task_name, split, docs)
  return docs


def _writable(directory: str) -> bool:
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError:
    return False
  return os.access(directory, os.W_OK)
