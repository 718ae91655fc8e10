"""xscreen.tables and xscreen.argtypes: the table format every report prints, and the shared flag types."""

from __future__ import annotations

import argparse

import pytest

from xscreen.argtypes import (
    choice_list,
    int_list,
    non_negative_float,
    positive_float,
    positive_int,
    size_pair,
)
from xscreen.tables import markdown_table


def test_markdown_table_rows_and_alignment():
    text = markdown_table(("name", "n", "ms"), [["a", 1, "2.50"], ["b c", 20, ""]])
    assert text.splitlines() == [
        "| name | n | ms |",
        "|---|---:|---:|",
        "| a | 1 | 2.50 |",
        "| b c | 20 |  |",
    ]
    assert markdown_table(("x", "y"), [], align="ll").splitlines()[1] == "|---|---|"


@pytest.mark.parametrize(
    "header, rows, align, message",
    [
        (("a", "b"), [[1]], None, "row 0 has 1 cells for 2 columns"),
        (("a", "b"), [[1, 2]], "l", "need one of 'l'/'r' for each of the 2 columns"),
        (("a", "b"), [[1, 2]], "lc", "need one of 'l'/'r'"),
    ],
)
def test_markdown_table_refuses_misshapen_input(header, rows, align, message):
    with pytest.raises(ValueError, match=message):
        markdown_table(header, rows, align=align)


@pytest.mark.parametrize(
    "parse, text, value",
    [
        (positive_int, "3", 3),
        (positive_float, "0.5", 0.5),
        (non_negative_float, "0", 0.0),
        (int_list(1), " 1, 4,16 ", [1, 4, 16]),
        (choice_list(("png", "raw")), "raw, png", ["raw", "png"]),
        (size_pair(32, "HEIGHTxWIDTH such as 800x1333"), "800X1333", (800, 1333)),
    ],
)
def test_argtypes_accept(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (positive_int, "two", "expected a whole number, got 'two'"),
        (positive_int, "0", "must be >= 1, got 0"),
        (positive_float, "-1", "must be a finite number > 0, got -1"),
        (positive_float, "inf", "must be a finite number > 0"),
        (non_negative_float, "nan", "must be a finite number >= 0"),
        (non_negative_float, "x", "expected a number, got 'x'"),
        (int_list(1), ",", "expected whole numbers separated by commas"),
        (int_list(1), "1,0", "must be >= 1, got 0"),
        (choice_list(("png", "raw")), "png,jpeg", "expected a comma list of png, raw; got 'png,jpeg'"),
        (choice_list(("png", "raw")), " , ", "expected a comma list of png, raw"),
        (size_pair(32, "HEIGHTxWIDTH such as 800x1333"), "800", "expected HEIGHTxWIDTH such as 800x1333"),
        (size_pair(32, "HEIGHTxWIDTH such as 800x1333"), "16x800", "each side must be >= 32"),
    ],
)
def test_argtypes_refuse_with_a_message(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)
