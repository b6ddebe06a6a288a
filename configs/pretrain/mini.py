"""bert-mini (4 layers, 256 wide, 4 heads) pretrained from scratch on a CPU, MLM at 128 tokens.

  python -m mebert.train --config=configs/pretrain/mini.py --workdir=runs/mini \
      --config.data.corpus='PATH/gutenberg-nltk/*.txt'

Reads any text the user points `data.corpus` at (files, globs, directories; see
mebert/data/corpora.py): a blank line separates documents, as in BERT's input format, which reads
Project Gutenberg's books as paragraphs. WikiText's raw files mark each article with a " = Title = "
line instead: add --config.data.doc_separator=' ?= [^=].* = ?' so that each article is one
document. The default corpus is the built-in one (2 MB), enough to try the recipe; a few epochs of
the 10 MB Gutenberg set fit in an hour on 2 cores. The first run trains a sentencepiece vocabulary
on the corpus; data.vocab=PATH/vocab.txt uses a WordPiece one instead (mebert.bench.pretrain
trains one that both mebert and Hugging Face read).

Masked LM only (data.next_sentence="none"): NSP on paragraph-sized documents has few true next
sentences to learn from, and this is the recipe mebert.bench.pretrain races against Hugging Face's
BertForMaskedLM. Dropout is off, as in the tiny config: runs of a few epochs do not overfit, and on
a CPU the masks cost about 30% of the step.
"""

from mebert.model.config import bert_size
from mebert.train.defaults import model_defaults, pretrain_defaults


def get_config(arg=None):
  del arg
  c = pretrain_defaults()
  c.model = model_defaults(**bert_size("mini"), max_position_embeddings=512, dropout_rate=0.0,
                           attention_dropout_rate=0.0)
  c.data.corpus = "builtin"
  c.data.vocab_size = 8192
  c.data.seq_len = 128
  c.data.max_predictions_per_seq = 20
  c.data.next_sentence = "none"
  c.data.eval_fraction = 0.02
  c.train.batch_size = 32
  c.train.num_steps = 10_000
  c.train.learning_rate = 5e-4
  c.train.warmup_steps = 600
  c.train.log_every = 100
  c.checkpoint.every_steps = 1000
  c.checkpoint.best_metric = "mlm_accuracy"
  c.eval.every_steps = 1000
  c.eval.num_batches = 20
  return c
