"""Defaults of the data config (`config.data` in configs/): every key the data layer reads."""

from __future__ import annotations

from ml_collections import config_dict


def default_data_config() -> config_dict.ConfigDict:
  """A ConfigDict with every data key and a sensible default; configs start from it and override."""
  c = config_dict.ConfigDict()
  # What to read. Spec grammar in mebert/data/corpora.py: "builtin", paths/globs (comma-separated),
  # "tfds:NAME[/CONFIG][:VERSION][@SPLIT]".
  c.corpus = "builtin"
  c.eval_corpus = ""  # "" = hold out documents of `corpus`
  c.eval_fraction = 0.02  # of documents, split by a stable hash; train and eval never share one
  c.min_eval_docs = 8  # held out even when eval_fraction rounds to fewer (capped at 1/4 of the corpus)
  c.one_doc_per_file = False  # local files: False = a blank line separates documents (BERT's format)
  # Local files: a regex; each line it matches in full starts a document (and is dropped), and blank
  # lines no longer do. WikiText: r" ?= [^=].* = ?" (its article titles). See corpora.py.
  c.doc_separator = ""
  c.max_line_chars = 4000  # longer lines are cut (counted in the corpus stats)
  c.tfds_data_dir = ""  # "" = TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  # Tokenizer: a file to load, or "" to train a sentencepiece model on the train documents.
  c.vocab = ""  # *.model (sentencepiece), vocab.txt or tokenizer.json (WordPiece), or a directory
  c.vocab_size = 8192  # for training only; the model must use tokenizer.vocab_size
  c.spm_model_type = "unigram"
  c.lowercase = True
  # Examples (google-research/bert create_pretraining_data.py semantics, made on the fly).
  c.seq_len = 128
  c.max_predictions_per_seq = 20
  c.masked_lm_prob = 0.15
  # Of the chosen tokens: the share put to [MASK] and to a random token; the rest stay unchanged.
  # BERT's 0.8 / 0.1; ELECTRA's released code 0.85 / 0 (configs/pretrain/electra_small.py).
  c.mask_token_prob = 0.8
  c.random_token_prob = 0.1
  c.short_seq_prob = 0.1
  c.whole_word_masking = False
  c.next_sentence = "nsp"  # "nsp" (BERT), "sop" (ALBERT sentence order), "none" (one segment)
  # RoBERTa's FULL-SENTENCES (mebert/data/spans.py): each example a span of whole sentences run on
  # across documents, a [SEP] between documents, up to seq_len. Needs next_sentence="none" and
  # short_seq_prob=0. False: examples stay within one document (with "none": DOC-SENTENCES).
  c.cross_document = False
  # Packing (mebert/data/packing.py): several whole examples per training row, each with its own
  # [CLS], NSP/SOP label, positions and masked positions, attention kept within each example. On
  # by default: every attention backend (xla, dot_product, cudnn, splash) masks by segment ids.
  # Eval rows are never packed (its metrics are per prediction; see pipeline.py).
  c.pack = True
  c.pack_max_examples = 0  # examples ([CLS] slots, NSP labels) per row; 0 = max(4, seq_len // 64)
  c.pack_max_predictions = 0  # masked-LM slots per row; 0 = enough that they never limit packing
  c.pack_bins = 64  # rows filled at once by the first-fit packer (more: fuller rows)
  c.pack_streams = 8  # independent packed streams; the process count must divide it (see packing.py)
  # Loading.
  c.num_workers = 0  # grain worker processes (0 = in-process); 1-2 on a 2-core machine
  c.read_threads = 2  # grain in-process read threads (per worker)
  c.prefetch_buffer_size = 64  # examples read ahead per worker
  # Batches put on the devices ahead of the step (0 = none): after a step that waits for the devices
  # (log, eval, checkpoint) the next one starts without waiting for its transfer.
  c.device_prefetch = 2
  return c
