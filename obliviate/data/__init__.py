"""Data: the item schema, readers for local files and hub datasets, and forget-request checks."""

from obliviate.data.checks import check_duplicates, check_forget_set, check_overlap, data_hash, find_overlap
from obliviate.data.readers import ItemList, load_items, parse_mapping
from obliviate.data.schema import Item, LabelledText, QAItem, TextPassage

__all__ = [
    "Item",
    "ItemList",
    "LabelledText",
    "QAItem",
    "TextPassage",
    "check_duplicates",
    "check_forget_set",
    "check_overlap",
    "data_hash",
    "find_overlap",
    "load_items",
    "parse_mapping",
]
