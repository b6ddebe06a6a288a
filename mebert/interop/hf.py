"""The Hugging Face interop API in one place (the modules beside it hold the implementations).

  load_hf_bert(dir, scan_layers=False) -> (ModelConfig, params, ImportReport)   # trainer: init.hf
  model_kwargs_from_hf(read_hf_config(dir))  # the architecture keys a run from `dir` must use
  check_same_architecture(run_cfg, hf_cfg, origin)                             # fail early, by key
  export_hf(params, cfg, dir, labels=, task_kind=, tokenizer_path=)             # -> ExportReport
  import_to_workdir(dir, workdir) / export_workdir(workdir, dir)               # the CLI's steps
  WordPiece.from_file(path).encode(texts, pairs, ...)                           # BertTokenizerFast parity
"""

from mebert.interop.errors import InteropError
from mebert.interop.hf_config import check_same_architecture, model_kwargs_from_hf, read_hf_config
from mebert.interop.hf_export import ExportReport, export_hf
from mebert.interop.hf_import import ImportReport, load_hf_bert
from mebert.interop.wordpiece import WordPiece
from mebert.interop.workdir import export_workdir, import_to_workdir

__all__ = ["InteropError", "ExportReport", "ImportReport", "WordPiece", "check_same_architecture",
           "export_hf", "export_workdir", "import_to_workdir", "load_hf_bert", "model_kwargs_from_hf",
           "read_hf_config"]
