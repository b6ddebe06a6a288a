"""mebert's data layer: corpora -> tokenizer -> BERT pretraining examples -> a grain stream.

  config.py          default_data_config(): every key, with defaults
  corpora.py         corpus specs ("builtin", paths/globs, "tfds:NAME"), decoding, held-out split
  builtin_corpus.py  the built-in corpus (pydoc topics + stdlib docstrings), no download
  tfds_corpus.py     a local TFDS builder: a text folder -> array_record, read without TensorFlow
  tokenizer.py       sentencepiece / WordPiece tokenizers, training, ensure_tokenizer
  docstore.py        tokenized documents and the static index of example starts
  instances.py       one example as a pure function of (seed, epoch, index): NSP/SOP, masking
  packing.py         several examples per training row (data.pack), in process-count-free streams
  pipeline.py        grain wiring: sharding, shuffling, epochs, packing, batching, checkpoints
  padding_report.py  CLI: the padding of unpacked and packed rows on a corpus, per length
"""
