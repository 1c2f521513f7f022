"""Batch prediction over CSV files: streamed in chunks, validated like the API.

A file larger than memory works: rows are read, validated, predicted and
written one chunk at a time. A bad row is reported with its line number; with
``skip_bad_rows`` it goes to a reject file (with the reason) instead.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from service.errors import InvalidInput, ServiceError
from service.files import replacing
from service.runtime.model import LoadedModel

DEFAULT_CHUNK_ROWS = 5000


class BadRow(ServiceError):
    code = "bad_row"


@dataclasses.dataclass
class BatchResult:
    rows: int = 0
    predicted: int = 0
    rejected: int = 0


def predict_csv(
    model: LoadedModel,
    input_path: Path,
    output_path: Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    skip_bad_rows: bool = False,
    rejects_path: Path | None = None,
    progress: bool = True,
) -> BatchResult:
    input_path, output_path = Path(input_path), Path(output_path)
    if rejects_path is None:
        rejects_path = output_path.with_name(output_path.stem + ".rejects.csv")
    # The output appears whole or not at all: a failed run leaves no partial file.
    with replacing(output_path, text=True, newline="") as sink:
        return _predict_to(
            model, input_path, sink, chunk_rows, skip_bad_rows, rejects_path, progress
        )


def _predict_to(
    model, input_path, sink: TextIO, chunk_rows, skip_bad_rows, rejects_path, progress
) -> BatchResult:
    result = BatchResult()
    with (
        open(input_path, newline="", encoding="utf-8") as source,
        tqdm(
            total=os.path.getsize(input_path),
            unit="B",
            unit_scale=True,
            desc=f"predicting with {model.name}@{model.version}",
            disable=not progress,
        ) as bar,
    ):
        reader = csv.reader(_counting(source, bar))
        header = next(reader, None)
        if not header:
            raise BadRow(f"{input_path}: the file is empty; expected a header row")
        columns = _column_plan(model, header, input_path)
        passthrough = [name for name in header if name not in model.schema.name_set]
        out_header = ["line", *passthrough, "prediction"]
        if model.has_proba:
            out_header += [f"probability_{c}" for c in model.classes]
        rejects_writer = None
        writer = csv.writer(sink)
        writer.writerow(out_header)
        rejects_file: TextIO | None = None
        try:
            for chunk in _chunks(reader, chunk_rows):
                result.rows += len(chunk)
                good, bad, model_input = _validate(model, chunk, columns, header)
                if bad and not skip_bad_rows:
                    line, message = bad[0]
                    raise BadRow(
                        f"{input_path}: line {line}: {message}"
                        + (f" ({len(bad) - 1} more bad rows in this chunk)" if len(bad) > 1 else "")
                        + "; use --skip-bad-rows to write bad rows to a reject file"
                    )
                if bad:
                    if rejects_writer is None:
                        rejects_file = open(rejects_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
                        rejects_writer = csv.writer(rejects_file)
                        rejects_writer.writerow(["line", "error", *header])
                    raw_by_line = {line: cells for line, cells in chunk}
                    for line, message in bad:
                        rejects_writer.writerow([line, message, *raw_by_line[line]])
                    result.rejected += len(bad)
                if good:
                    _write_predictions(model, good, model_input, header, passthrough, writer)
                    result.predicted += len(good)
        finally:
            if rejects_file is not None:
                rejects_file.close()
    return result


def _counting(lines: TextIO, bar: tqdm) -> Iterator[str]:
    for line in lines:
        bar.update(len(line))
        yield line


def _chunks(reader, size: int) -> Iterator[list[tuple[int, list[str]]]]:
    chunk: list[tuple[int, list[str]]] = []
    for cells in reader:
        if not cells:
            continue  # blank line
        chunk.append((reader.line_num, cells))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _column_plan(model: LoadedModel, header: list[str], path: Path) -> list[int]:
    positions = {name: i for i, name in enumerate(header)}
    missing = [name for name in model.schema.names if name not in positions]
    if missing:
        raise BadRow(f"{path}: the header lacks the model's features {missing}")
    return [positions[name] for name in model.schema.names]


def _convert(model: LoadedModel, cells: list[str], columns: list[int], width: int) -> list[Any]:
    if len(cells) != width:
        raise InvalidInput(f"has {len(cells)} cells, the header has {width}")
    values: list[Any] = []
    for feature, column in zip(model.schema.features, columns, strict=True):
        cell = cells[column].strip()
        if cell == "":
            values.append(None)
        elif feature.is_numeric:
            try:
                values.append(float(cell))
            except ValueError:
                values.append(cell)  # reported by the schema as "expected a number"
        else:
            values.append(cell)
    return values


def _validate(model, chunk, columns, header):
    """Split a chunk into the rows that validate, with the model input built from them,
    and (line, reason) for the rows that do not."""
    bad = []
    rows = []
    for line, cells in chunk:
        try:
            rows.append((line, _convert(model, cells, columns, len(header)), cells))
        except InvalidInput as exc:
            bad.append((line, exc.message))
    try:
        return rows, bad, (model.prepare([values for _, values, _ in rows]) if rows else None)
    except InvalidInput:
        pass
    good = []
    for line, values, cells in rows:
        try:
            model.prepare([values])
            good.append((line, values, cells))
        except InvalidInput as exc:
            bad.append((line, exc.message.removeprefix("instance 0, ")))
    bad.sort()
    return good, bad, (model.prepare([values for _, values, _ in good]) if good else None)


def _write_predictions(model, good, model_input, header, passthrough, writer) -> None:
    prediction = model.predict_prepared(model_input)
    keep = [header.index(name) for name in passthrough]
    probabilities = prediction.probabilities or [None] * len(good)
    for (line, _, cells), label, proba in zip(
        good, prediction.predictions, probabilities, strict=True
    ):
        row = [line, *(cells[i] for i in keep), label]
        if proba is not None:
            row += proba
        writer.writerow(row)
