"""The one exception the interop code raises for bad inputs.

A ValueError subclass, so callers that already catch ValueError for bad configs keep working, and
the CLI can print its one-line message without a traceback.
"""


class InteropError(ValueError):
  """A Hugging Face folder, mebert checkpoint or tokenizer file cannot be converted as asked."""
