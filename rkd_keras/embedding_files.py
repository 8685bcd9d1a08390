"""Teacher embeddings in a file: a teacher from any framework teaches a Keras student.

RKD needs nothing of the teacher but its embedding of each training image, so
the teacher may be a PyTorch or JAX model, or an embedding service: anything
that writes one row per image works. The file holds, per image, its path (the
key `data.image_paths` gives: for a folder the path relative to it, POSIX
separators, e.g. `"coat/0001.png"`) and its embedding:

- Parquet (`.parquet`, needs `pyarrow`): columns `path` (string) and
  `embedding` (a list of floats), written in row groups of `ROW_GROUP_ROWS`;
- NumPy (`.npz`): arrays `paths` (strings) and `embeddings` (`(N, D)` floats).

`write_embeddings` writes one atomically (a partial file never remains);
`read_embeddings` reads and checks one, and with `paths=` gives the rows of
those images in their order; `with_teacher_embeddings` pairs a dataset's
images with them as `Distiller(None, student, ...)` trains.

Plain NumPy (and pyarrow for Parquet) until `with_teacher_embeddings`: the
command line checks a file's suffix before TensorFlow loads.
"""

import os
import tempfile
from pathlib import Path

import numpy as np

SUFFIXES = (".parquet", ".npz")
# Rows per Parquet row group: a reader holds one group at a time.
ROW_GROUP_ROWS = 4096


def check_suffix(file) -> str:
    """The format of `file` by its suffix, `".parquet"` or `".npz"`; raises ValueError for another."""
    suffix = Path(file).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"teacher embeddings file {file} has the suffix {suffix or '(none)'!r}, which names no format of "
            "teacher embeddings; give a .parquet file (columns path, embedding) or an .npz file (arrays paths, "
            "embeddings)."
        )
    return suffix


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ImportError(
            "Parquet teacher embeddings need pyarrow: pip install pyarrow (or rkd-keras[embeddings]), or use an .npz file."
        ) from None
    return pyarrow


def _checked_rows(file, paths, embeddings, width):
    """`(paths, embeddings)` of one chunk as a list of str and a float32 (n, width) array, or an error naming the row."""
    paths = [path.decode() if isinstance(path, bytes) else str(path) for path in np.asarray(paths).reshape(-1)]
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != len(paths):
        raise ValueError(
            f"teacher embeddings for {file}: {len(paths)} paths but embeddings of shape {embeddings.shape}; give one "
            "row (a vector) per path."
        )
    if width is not None and embeddings.shape[1] != width:
        raise ValueError(
            f"teacher embeddings for {file}: the row of {paths[0]} has width {embeddings.shape[1]}, the first rows "
            f"{width}; every row must be of one width (one teacher)."
        )
    embeddings = embeddings.astype(np.float32)
    return paths, embeddings


def _check_finite(file, paths, embeddings):
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise ValueError(
            f"teacher embeddings {file}: the row of {paths[row]} holds NaN/Inf values; recompute it (was the teacher "
            "trained to NaN?)."
        )


def write_embeddings(file, rows) -> int:
    """Writes teacher embeddings to a `.parquet` or `.npz` file, atomically.

    The rows are written under a temporary name in the file's folder and
    renamed when all are written: on an error nothing remains, and an
    existing file of that name is replaced only by a complete one. Parquet is
    written one row group at a time (bounded memory); `.npz` holds all rows
    in memory once.

    Args:
        file: The file to write; its suffix chooses the format.
        rows: An iterable of `(paths, embeddings)` chunks: `paths` a sequence
            of strings (`data.image_paths`), `embeddings` an array of one row
            per path, every row of one width and finite.

    Returns:
        The number of rows written.

    Raises:
        ValueError: an unknown suffix, rows of different widths, a non-finite
            row (named by its path), or a path given twice.

    Example:
    ```python
    rkd_keras.write_embeddings("teacher.parquet", [(["coat/0001.png", "bag/0002.png"], np.eye(2, 128))])
    ```
    """
    file = Path(file)
    suffix = check_suffix(file)
    pyarrow = _pyarrow() if suffix == ".parquet" else None
    handle, temporary = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".partial", dir=file.parent)
    os.close(handle)
    count, width, seen, held = 0, None, set(), []
    writer = None
    try:
        for paths, embeddings in rows:
            paths, embeddings = _checked_rows(file, paths, embeddings, width)
            if not paths:
                continue
            _check_finite(file, paths, embeddings)
            width = embeddings.shape[1]
            for path in paths:
                if path in seen:
                    raise ValueError(f"teacher embeddings for {file}: the path {path} is given twice; give each image once.")
                seen.add(path)
            count += len(paths)
            if pyarrow is None:
                held.append((paths, embeddings))
                continue
            column = pyarrow.ListArray.from_arrays(
                np.arange(0, embeddings.size + 1, width, dtype=np.int32), pyarrow.array(embeddings.reshape(-1))
            )
            table = pyarrow.table({"path": pyarrow.array(paths, pyarrow.string()), "embedding": column})
            if writer is None:
                writer = pyarrow.parquet.ParquetWriter(temporary, table.schema)
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        if pyarrow is None:
            with open(temporary, "wb") as stream:
                np.savez(
                    stream,
                    paths=np.array([path for paths, _ in held for path in paths], dtype=str),
                    embeddings=np.concatenate([e for _, e in held]) if held else np.zeros((0, 0), np.float32),
                )
        elif writer is None:
            schema = pyarrow.schema([("path", pyarrow.string()), ("embedding", pyarrow.list_(pyarrow.float32()))])
            writer = pyarrow.parquet.ParquetWriter(temporary, schema)
        if writer is not None:
            writer.close()
            writer = None
        os.replace(temporary, file)
    except BaseException:
        if writer is not None:
            writer.close()
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


def _read_chunks(file, suffix):
    """`(paths, embeddings)` chunks of the file: one per Parquet row group, or the whole `.npz`."""
    if suffix == ".npz":
        try:
            with np.load(file, allow_pickle=False) as arrays:
                missing = [name for name in ("paths", "embeddings") if name not in arrays.files]
                if missing:
                    raise ValueError(
                        f"teacher embeddings file {file} holds the arrays {', '.join(arrays.files) or 'none'}, not "
                        f"{' and '.join(missing)}; write paths (strings) and embeddings (one row per path)."
                    )
                try:
                    embeddings, paths = arrays["embeddings"], arrays["paths"]
                except ValueError:  # an object array (rows of different widths): allow_pickle=False refuses it
                    embeddings = paths = None
                if embeddings is None or embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.number):
                    raise ValueError(
                        f"teacher embeddings file {file}: its embeddings are not one (rows, width) array of floats and its "
                        "paths not strings (rows of different widths?); every row must be of one width (one teacher)."
                    )
                yield paths, embeddings
        except (OSError, EOFError) as error:  # a zip that is no .npz, a truncated file
            raise ValueError(f"teacher embeddings file {file} is not a readable .npz file ({error}).") from error
        return
    pyarrow = _pyarrow()
    try:
        parquet = pyarrow.parquet.ParquetFile(file)
    except (pyarrow.ArrowException, OSError) as error:
        raise ValueError(f"teacher embeddings file {file} is not a readable Parquet file ({error}).") from error
    missing = [name for name in ("path", "embedding") if name not in parquet.schema_arrow.names]
    if missing:
        raise ValueError(
            f"teacher embeddings file {file} has the columns {', '.join(parquet.schema_arrow.names) or 'none'}, not "
            f"{' and '.join(missing)}; write a column path (strings) and a column embedding (lists of floats)."
        )
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=["path", "embedding"])
        paths = table.column("path").to_pylist()
        column = table.column("embedding").combine_chunks()
        if not pyarrow.types.is_list(column.type) and not pyarrow.types.is_large_list(column.type) \
                and not pyarrow.types.is_fixed_size_list(column.type):
            raise ValueError(f"teacher embeddings file {file}: its embedding column is of type {column.type}, not lists of floats.")
        lengths = column.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.argmax(lengths != lengths[0]))
            raise ValueError(
                f"teacher embeddings file {file}: the row of {paths[row]} has width {lengths[row]}, the row of "
                f"{paths[0]} {lengths[0]}; every row must be of one width (one teacher)."
            )
        values = column.flatten().to_numpy(zero_copy_only=False)
        yield paths, values.reshape(len(paths), int(lengths[0]) if len(lengths) else 0)


def read_embeddings(file, paths=None):
    """Reads and checks a teacher-embeddings file (`.parquet` or `.npz`, see the module).

    Args:
        file: The file.
        paths: Optional: the images whose rows to give, in their order
            (`data.image_paths` of the training split); each must have a row.

    Returns:
        Without `paths`: `(paths, embeddings)`, a list of the file's paths
        and a float32 `(rows, width)` array. With `paths`: the float32
        `(len(paths), width)` array of their rows.

    Raises:
        FileNotFoundError: there is no file.
        ValueError: an unknown suffix, a file without the columns, rows of
            different widths, a non-finite row or a path given twice (named),
            an image of `paths` without a row (named).

    Example:
    ```python
    rows = rkd_keras.read_embeddings("teacher.parquet", paths=rkd_keras.image_paths("folder", "train", path="images"))
    ```
    """
    file = Path(file)
    suffix = check_suffix(file)
    if not file.is_file():
        raise FileNotFoundError(f"teacher embeddings file {file} does not exist.")
    all_paths, chunks, width, index = [], [], None, {}
    for chunk_paths, embeddings in _read_chunks(file, suffix):
        chunk_paths, embeddings = _checked_rows(file, chunk_paths, embeddings, width)
        if not chunk_paths:
            continue
        _check_finite(file, chunk_paths, embeddings)
        width = embeddings.shape[1]
        for path in chunk_paths:
            if path in index:
                raise ValueError(f"teacher embeddings file {file}: the path {path} has two rows; keep one row per image.")
            index[path] = len(index)
        all_paths += chunk_paths
        chunks.append(embeddings)
    if not chunks:
        raise ValueError(f"teacher embeddings file {file} holds no rows.")
    embeddings = np.concatenate(chunks)
    if paths is None:
        return all_paths, embeddings
    wanted = [path.decode() if isinstance(path, bytes) else str(path) for path in paths]
    missing = [path for path in wanted if path not in index]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(
            f"the training image {missing[0]}{more} has no row in the teacher embeddings file {file}; embed every "
            "training image (rkd-keras embed) with the same dataset settings."
        )
    return embeddings[[index[path] for path in wanted]]


def with_teacher_embeddings(dataset, embeddings):
    """`dataset` of `(x, label)` with each `x` paired with its teacher row: `({"inputs": x, "teacher_embeddings": row}, label)`.

    What `Distiller(None, student, ...)` trains from, and `pk_batches`
    samples. The rows follow the dataset's order (`read_embeddings(file,
    paths=image_paths(...))` gives them so).

    Args:
        dataset: A finite `tf.data.Dataset` of unbatched `(x, label)`.
        embeddings: One row per element of `dataset`, in its order.

    Example:
    ```python
    cached = rkd_keras.with_teacher_embeddings(train, rkd_keras.read_embeddings(file, paths=paths))
    distiller.fit(rkd_keras.pk_batches(cached, 5, 12, seed=0))
    ```
    """
    import tensorflow as tf

    from rkd_keras.terms import INPUTS, TEACHER_TENSORS

    embeddings = np.asarray(embeddings, np.float32)
    rows = tf.data.Dataset.from_tensor_slices(embeddings)
    known = int(dataset.cardinality())
    if known < 0:  # after a filter (a validation hold-out): count, as zip would stop at the shorter in silence
        known = int(dataset.reduce(0, lambda total, *_: total + 1))
    if known != len(embeddings):
        raise ValueError(
            f"the dataset holds {known} images but {len(embeddings)} teacher rows were given; give the rows of its "
            "images, in its order (read_embeddings(file, paths=image_paths(...)))."
        )
    return tf.data.Dataset.zip(dataset, rows).map(lambda item, row: ({INPUTS: item[0], TEACHER_TENSORS: row}, item[1]))
