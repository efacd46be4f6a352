"""``vqa eval``: accuracy on standard video benchmarks, every mode, reproducibly (see docs/eval.md).

``_files`` reads each benchmark's annotation files as published (``--format auto`` tells which) and
``_formats`` turns their rows into ``Item``s; ``_layout`` finds each question's video under ``--videos``;
``_prompts`` builds the question text per protocol; ``_extract`` finds the answer letter by the protocol's
rules; ``_score`` scores by generation or by the option letters' likelihood; ``_stats`` computes accuracy
and its clustered 95 % interval; ``_evaluate`` answers (one decode and encode per clip, a shared prompt
prefix, several modes; ``_remote``: a server's answers); ``_run`` is the run (resume, outputs, summary).
"""

from vqa_cli.jobs.eval._evaluate import Evaluator, group_items
from vqa_cli.jobs.eval._extract import extract, guess, unparsed_policy
from vqa_cli.jobs.eval._files import Benchmark, detect, read_benchmark, read_items
from vqa_cli.jobs.eval._formats import LETTERS, Format, Item
from vqa_cli.jobs.eval._layout import VideoFinder, resolve_video
from vqa_cli.jobs.eval._prompts import Protocol, build
from vqa_cli.jobs.eval._published import published
from vqa_cli.jobs.eval._run import EVAL_MAX_NEW_TOKENS, run_eval
from vqa_cli.jobs.eval._score import Score, by_generation, by_likelihood, letter_ids, letter_logprobs
from vqa_cli.jobs.eval._stats import clustered_ci, summarize

__all__ = [
    "EVAL_MAX_NEW_TOKENS", "LETTERS", "Benchmark", "Evaluator", "Format", "Item", "Protocol", "Score", "VideoFinder",
    "build", "by_generation", "by_likelihood", "clustered_ci", "detect", "extract", "group_items", "guess",
    "letter_ids", "letter_logprobs", "published", "read_benchmark", "read_items", "resolve_video", "run_eval",
    "summarize", "unparsed_policy",
]
