"""The Hugging Face interop API in one place (the modules beside it hold the implementations).

  load_hf_bert(dir, scan_layers=False) -> (ModelConfig, params, ImportReport)   # trainer: init.hf
  export_hf(params, cfg, dir, labels=, task_kind=, tokenizer_path=)             # -> ExportReport
  import_to_workdir(dir, workdir) / export_workdir(workdir, dir)               # the CLI's steps
  WordPiece.from_file(path).encode(texts, pairs, ...)                           # BertTokenizerFast parity
"""

from mebert.interop.errors import InteropError
from mebert.interop.hf_export import ExportReport, export_hf
from mebert.interop.hf_import import ImportReport, load_hf_bert
from mebert.interop.wordpiece import WordPiece
from mebert.interop.workdir import export_workdir, import_to_workdir

__all__ = ["InteropError", "ExportReport", "ImportReport", "WordPiece", "export_hf",
           "export_workdir", "import_to_workdir", "load_hf_bert"]
