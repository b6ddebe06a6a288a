"""Reading a Hugging Face folder's weight files: safetensors by default, pickle only when asked.

safetensors files are read lazily through the `safetensors` numpy API, so shapes are checked before
any tensor is loaded. A pickled `pytorch_model.bin` can run arbitrary code when unpickled, so it is
refused unless the caller opts in; even then it goes through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from mebert.interop.errors import InteropError

_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class Weights:
  """key -> tensor across one or more files; `shape` is cheap, `get` loads one tensor."""

  def __init__(self, files: dict[str, str], shapes: dict[str, tuple[int, ...]], loader):
    self.files = files  # key -> file it lives in
    self.shapes = shapes
    self._loader = loader

  def keys(self) -> list[str]:
    return list(self.shapes)

  def __contains__(self, key: str) -> bool:
    return key in self.shapes

  def file_of(self, key: str) -> str:
    return self.files[key]

  def get(self, key: str) -> np.ndarray:
    return self._loader(key)


def _index_files(index_path: str) -> list[str]:
  with open(index_path, encoding="utf-8") as f:
    weight_map = json.load(f).get("weight_map", {})
  folder = os.path.dirname(index_path)
  return sorted({os.path.join(folder, name) for name in weight_map.values()})


def safetensors_files(folder: str) -> list[str]:
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.isfile(index):
    return _index_files(index)
  single = os.path.join(folder, "model.safetensors")
  if os.path.isfile(single):
    return [single]
  return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors"))


def open_weights(folder: str, *, allow_pickle: bool = False) -> Weights:
  if not os.path.isdir(folder):
    raise InteropError(f"{folder}: not a folder")
  files = safetensors_files(folder)
  if files:
    return _open_safetensors(files)
  pickled = [os.path.join(folder, n) for n in _PICKLE_NAMES if os.path.isfile(os.path.join(folder, n))]
  if pickled and not allow_pickle:
    raise InteropError(
        f"{pickled[0]}: only pickled PyTorch weights here and pickle can run code when loaded; "
        "convert to model.safetensors, or pass --allow-pickle (allow_pickle=True) to read it with "
        "torch.load(weights_only=True)")
  if pickled:
    return _open_pickle(pickled[0])
  raise InteropError(f"{folder}: no model.safetensors (or pytorch_model.bin) in this folder")


def _read_raw(path: str, key: str, info: dict) -> np.ndarray:
  """A tensor numpy cannot name (bfloat16) read from the file's byte layout, via ml_dtypes."""
  import ml_dtypes  # a jax dependency

  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    start, end = info["data_offsets"]
    f.seek(8 + header_len + start)
    raw = f.read(end - start)
  if info["dtype"] != "BF16":
    raise InteropError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
  return np.frombuffer(raw, dtype=ml_dtypes.bfloat16).reshape(info["shape"]).astype(np.float32)


def _header(path: str) -> dict:
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    return json.loads(f.read(header_len))


def _open_safetensors(paths: list[str]) -> Weights:
  from safetensors import safe_open

  files, shapes = {}, {}
  for path in paths:
    if not os.path.isfile(path):
      raise InteropError(f"{path}: listed in the safetensors index but missing")
    try:
      with safe_open(path, framework="numpy") as f:
        for key in f.keys():
          files[key] = path
          shapes[key] = tuple(f.get_slice(key).get_shape())
    except InteropError:
      raise
    except Exception as e:  # a truncated or corrupt file: safetensors' message, one line
      raise InteropError(f"{path}: unreadable safetensors file ({str(e).splitlines()[0][:200]})") from None

  def load(key: str) -> np.ndarray:
    path = files[key]
    with safe_open(path, framework="numpy") as f:
      try:
        return f.get_tensor(key)
      except TypeError:  # bfloat16: numpy has no such dtype
        return _read_raw(path, key, _header(path)[key])

  return Weights(files, shapes, load)


def _open_pickle(path: str) -> Weights:
  try:
    import torch
  except ImportError:
    raise InteropError(f"{path}: reading pickled weights needs torch, which is not installed") from None
  paths = _index_files(path) if path.endswith(".json") else [path]
  tensors = {}
  for p in paths:
    try:
      state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; report the first line
      raise InteropError(f"{p}: torch.load(weights_only=True) failed "
                         f"({str(e).splitlines()[0][:200]})") from None
    for key, value in state.items():
      tensors[key] = (p, value)
  return Weights({k: p for k, (p, _) in tensors.items()},
                 {k: tuple(v.shape) for k, (_, v) in tensors.items()},
                 lambda key: tensors[key][1].float().numpy() if tensors[key][1].is_floating_point()
                 else tensors[key][1].numpy())
