"""Data: formats, validation, statistics, quality, splits, chat templates and loss masks.

The main entry points::

    from togi.data import load_dataset, check_dataset, compute_stats, split_indices, tokenize_chat
"""

from togi.data.examples import ChatExample, ClassificationExample, Dataset, ExampleKind, KTOExample, Message, PreferenceExample
from togi.data.findings import Finding, Severity
from togi.data.formats import FORMATS, LoadOptions, load_dataset
from togi.data.split import split_indices
from togi.data.stats import DatasetStats, compute_stats
from togi.data.template import tokenize_chat, tokenize_example
from togi.data.validate import CheckOptions, CheckReport, check_dataset

__all__ = [
    "FORMATS", "ChatExample", "CheckOptions", "CheckReport", "ClassificationExample", "Dataset", "DatasetStats", "ExampleKind",
    "Finding", "KTOExample", "LoadOptions", "Message", "PreferenceExample", "Severity", "check_dataset", "compute_stats",
    "load_dataset", "split_indices", "tokenize_chat", "tokenize_example",
]
