"""mcutrain's file formats: `.mtd` datasets and `.mtm` models (layouts in docs/formats.md).

    write_dataset(path, x, y, dtype="int8", class_names=[...])   # x channels-last
    with DatasetReader(path) as r: x0, y0 = r[0]                  # lazy, O(1) seek
    write_model(path, ModelSpec(graph, tensors, input_shape=(28, 28, 1)))
    spec = read_model(path); load_reference_model(path).predict(x)
"""

from .arrays import DatasetArrays
from .common import DTYPE_CODES, FormatError, crc32
from .mtd import (
    DatasetHeader,
    DatasetReader,
    read_dataset,
    read_dataset_header,
    write_arrays,
    write_dataset,
)
from .mtm import model_bytes, parse_model, read_model, read_model_graph, write_model
from .quant import dequantize_int8, int8_params, quantize_int8
from .reference_model import build_reference_model, load_reference_model
from .sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    SourceError,
    load_csv,
    load_idx,
    load_mnist_folder,
    load_npz,
    load_source,
    load_wav_folder,
    read_idx,
    read_wav,
)
from .spec import (
    ModelSpec,
    SpecError,
    expected_tensors,
    layer,
    leaves,
    output_shape,
    residual,
    sequential,
)

__all__ = [
    "DTYPE_CODES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "DatasetArrays",
    "DatasetHeader",
    "DatasetReader",
    "FormatError",
    "ModelSpec",
    "SourceError",
    "SpecError",
    "build_reference_model",
    "crc32",
    "dequantize_int8",
    "expected_tensors",
    "int8_params",
    "layer",
    "leaves",
    "load_csv",
    "load_idx",
    "load_mnist_folder",
    "load_npz",
    "load_reference_model",
    "load_source",
    "load_wav_folder",
    "model_bytes",
    "output_shape",
    "parse_model",
    "quantize_int8",
    "read_dataset",
    "read_dataset_header",
    "read_idx",
    "read_model",
    "read_model_graph",
    "read_wav",
    "residual",
    "sequential",
    "write_arrays",
    "write_dataset",
    "write_model",
]
