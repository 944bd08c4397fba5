"""Corpora and the Distill autocomplete recipe: text -> padded (inputs, targets) batches.

The recipe (distillpub/post--memorization-in-rnns): normalised text is a stream of words separated
by single spaces. Each word contributes the input ``' ' + word`` and the targets
``[word_id] * (len(word) + 1)``: the leading space is labelled with the word it precedes, so the
model is asked for the next word before it has seen a letter of it. Words are packed greedily, in
text order, into observations of at most ``max_len`` characters; an observation is flushed before a
word that would overflow it, so every observation starts with a space, holds whole words only and
never overlaps another. Words longer than ``max_len - 1`` characters cannot fit and are dropped.

Observations are split 90/5/5 by a seeded permutation, and the output vocabulary is counted on the
training split only (the article counted all of text8, test included). The character-level task
(``charlm``) uses the same observations and split with next-symbol targets.

Everything is vectorised with NumPy: the only Python loops run per observation (about 500k for
text8) or inside C (``str.split``, ``set``, ``map``). A text8-sized synthetic corpus (100 MB, 17M
words) prepares in about 18 s on two busy cores with a 2.8 GB peak; most of it is the per-word
dictionary lookup that gives each word its type id.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import numpy as np

from edge_rnn.io import EdgeRNNError, atomic_path, sha256_file
from edge_rnn.vocab import PAD, SPACE, UNK, Vocab, encode_chars

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_SHA256 = "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232"
TASKS = ("autocomplete", "charlm")
MAX_CORPUS_BYTES = 4 << 30  # 40x text8; normalising needs ~3 bytes of memory per input byte
MIN_OBSERVATIONS = 20  # the smallest N for which floor(0.05 N) >= 1 and the test split is non-empty

# --------------------------------------------------------------------------------------------
# Normalisation


# byte -> byte tables: ASCII upper case to lower case; then letters kept, everything else a space
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[ord("A") : ord("Z") + 1] += 32
_LETTERS = np.full(256, ord(" "), dtype=np.uint8)
_LETTERS[ord("a") : ord("z") + 1] = np.arange(ord("a"), ord("z") + 1, dtype=np.uint8)


def normalise(text: str) -> str:
    """text8-style normalisation: only the letters a-z survive, lower-cased, single spaces.

    WikiText's literal ``<unk>`` (any case) is removed first, so it does not leave a word "unk".
    Every other character becomes a space: digits, punctuation, apostrophes and hyphens
    ("don't" -> "don t", "well-known" -> "well known") and non-ASCII letters ("café" -> "caf");
    that is text8's rule, and it keeps the 28-symbol input alphabet. Works on UTF-8 bytes with
    lookup tables, because ``re.sub`` needs ~7 s for 100 MB and this needs about one.
    """
    raw = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    lowered = _LOWER[raw].tobytes().replace(b"<unk>", b" ")
    letters = _LETTERS[np.frombuffer(lowered, dtype=np.uint8)]
    space = letters == ord(" ")
    keep = ~space
    keep[1:] |= ~space[:-1]  # a space survives only right after a letter: runs collapse, no lead
    out = letters[keep].tobytes().decode("ascii")
    return out[:-1] if out.endswith(" ") else out


# --------------------------------------------------------------------------------------------
# Corpora: text8 download, a built-in demo corpus, local files


def cache_dir() -> Path:
    """Downloads: ``$EDGE_RNN_CACHE``, else ``$XDG_CACHE_HOME/edge-rnn``, else ~/.cache/edge-rnn."""
    if os.environ.get("EDGE_RNN_CACHE"):
        return Path(os.environ["EDGE_RNN_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "edge-rnn"
    return Path.home() / ".cache" / "edge-rnn"


def _download(url: str, dest: Path) -> str:
    """Stream ``url`` into ``dest`` with a progress bar; return the sha256 of what was written."""
    from rich.console import Console  # lazy: only downloads need rich
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn())
            with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task(f"downloading {Path(urlparse(url).path).name}", total=total)
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise EdgeRNNError(f"could not download text8 from {url}: {reason}; "
                           "pass --corpus PATH or --corpus demo to work offline") from None
    return digest.hexdigest()


def fetch_text8(url: str = TEXT8_URL, sha256: str = TEXT8_SHA256,
                cache: Path | None = None) -> Path:
    """Return the path of the cached text8 zip, downloading it once.

    The download goes to a temporary file beside the target and is renamed into place only after
    its sha256 matches, so the cache never holds a partial or wrong file. A cached file is
    re-checked on every call (0.1 s); a corrupt one is removed so the next call downloads afresh.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    path = cache / (Path(urlparse(url).path).name or "text8.zip")
    if path.exists():
        if sha256_file(path) != sha256:
            path.unlink()
            raise EdgeRNNError(f"cached text8 at {path} is corrupt (sha256 mismatch); "
                               "it was removed: run again to download a fresh copy")
        return path
    with atomic_path(path) as tmp:
        got = _download(url, tmp)
        if got != sha256:
            raise EdgeRNNError(f"downloaded text8 from {url} is corrupt (sha256 {got[:12]}..., "
                               f"expected {sha256[:12]}...); nothing was cached: try again")
    return path


def read_text8(zip_path: Path) -> str:
    """The text of the single member ``text8`` (100 MB of a-z and spaces)."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            data = z.read("text8")
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        raise EdgeRNNError(f"{zip_path} is not a text8 zip: {e}") from None
    return data.decode("latin-1")  # text8 is ASCII; latin-1 never fails and normalise cleans up


def load_corpus(spec: str) -> str:
    """``"demo"``, ``"text8"`` or a path to a UTF-8 text file -> normalised text.

    A file literally named ``demo`` or ``text8`` in the working directory is reached as ``./demo``.
    """
    if spec == "demo":
        return demo_corpus()
    if spec == "text8":
        return normalise(read_text8(fetch_text8(TEXT8_URL, TEXT8_SHA256)))
    path = Path(spec).expanduser()
    if not path.exists():
        raise EdgeRNNError(f"corpus file not found: {path} (or use --corpus demo / text8)")
    if path.is_dir():
        raise EdgeRNNError(f"{path} is a directory; expected a UTF-8 text file")
    if path.is_file() and path.stat().st_size > MAX_CORPUS_BYTES:
        raise EdgeRNNError(f"{path} is {path.stat().st_size:,} bytes; corpora up to "
                           f"{MAX_CORPUS_BYTES:,} bytes are supported (take a sample of it)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EdgeRNNError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgeRNNError(f"{path} is not valid UTF-8 (byte offset {e.start}: "
                           f"{data[e.start:e.start + 1]!r})") from None
    text = normalise(text)
    if not text:
        raise EdgeRNNError(f"no usable characters (a-z) in {path}")
    return text


# --------------------------------------------------------------------------------------------
# The demo corpus: small, offline, and built so that the right next word depends on earlier words

# country, capital, language, adjective, dish: one word each, so sentences are easy to check
COUNTRIES = [
    ("france", "paris", "french", "french", "cheese"),
    ("spain", "madrid", "spanish", "spanish", "paella"),
    ("italy", "rome", "italian", "italian", "pasta"),
    ("germany", "berlin", "german", "german", "sausages"),
    ("portugal", "lisbon", "portuguese", "portuguese", "custard"),
    ("greece", "athens", "greek", "greek", "olives"),
    ("russia", "moscow", "russian", "russian", "blini"),
    ("japan", "tokyo", "japanese", "japanese", "sushi"),
    ("china", "beijing", "chinese", "chinese", "noodles"),
    ("egypt", "cairo", "arabic", "egyptian", "falafel"),
    ("turkey", "ankara", "turkish", "turkish", "kebabs"),
    ("poland", "warsaw", "polish", "polish", "pierogi"),
    ("sweden", "stockholm", "swedish", "swedish", "meatballs"),
    ("norway", "oslo", "norwegian", "norwegian", "salmon"),
    ("finland", "helsinki", "finnish", "finnish", "porridge"),
    ("denmark", "copenhagen", "danish", "danish", "pastries"),
    ("netherlands", "amsterdam", "dutch", "dutch", "herring"),
    ("hungary", "budapest", "hungarian", "hungarian", "goulash"),
    ("austria", "vienna", "german", "austrian", "schnitzel"),
    ("czechia", "prague", "czech", "czech", "dumplings"),
    ("ukraine", "kyiv", "ukrainian", "ukrainian", "borscht"),
    ("romania", "bucharest", "romanian", "romanian", "sarmale"),
    ("brazil", "brasilia", "portuguese", "brazilian", "feijoada"),
    ("peru", "lima", "spanish", "peruvian", "ceviche"),
    ("chile", "santiago", "spanish", "chilean", "empanadas"),
    ("cuba", "havana", "spanish", "cuban", "sandwiches"),
    ("canada", "ottawa", "english", "canadian", "pancakes"),
    ("kenya", "nairobi", "swahili", "kenyan", "ugali"),
    ("nigeria", "abuja", "english", "nigerian", "jollof"),
    ("morocco", "rabat", "arabic", "moroccan", "couscous"),
    ("thailand", "bangkok", "thai", "thai", "curry"),
    ("vietnam", "hanoi", "vietnamese", "vietnamese", "pho"),
    ("korea", "seoul", "korean", "korean", "kimchi"),
    ("iran", "tehran", "persian", "iranian", "saffron"),
    ("england", "london", "english", "english", "pudding"),
    ("australia", "canberra", "english", "australian", "barbecue"),
]
FEMALE = ["maria", "anna", "sofia", "emma", "laura", "elena", "julia", "sara", "nina", "olivia",
          "alice", "clara", "hannah", "yuki", "mei", "amira", "fatima", "ingrid"]
MALE = ["john", "peter", "david", "carlos", "marco", "lukas", "ahmed", "kenji", "ivan", "pierre",
        "tom", "paul", "omar", "lars", "diego", "james", "hans", "wei"]
PEOPLE = [(n, "she", "her") for n in FEMALE] + [(n, "he", "his") for n in MALE]
RELATIVES = [("brother", "he"), ("sister", "she"), ("father", "he"), ("mother", "she"),
             ("uncle", "he"), ("aunt", "she"), ("son", "he"), ("daughter", "she"),
             ("grandfather", "he"), ("grandmother", "she")]
PERSON_NOUNS = [("man", "he"), ("woman", "she"), ("boy", "he"), ("girl", "she")]
NOUNS = [("dog", "dogs"), ("cat", "cats"), ("key", "keys"), ("book", "books"), ("car", "cars"),
         ("house", "houses"), ("child", "children"), ("man", "men"), ("woman", "women"),
         ("box", "boxes"), ("bird", "birds"), ("teacher", "teachers"), ("student", "students"),
         ("letter", "letters"), ("horse", "horses"), ("window", "windows"),
         ("painting", "paintings"), ("chair", "chairs")]
ITEMS = [("apple", "apples"), ("bottle", "bottles"), ("flower", "flowers"), ("ticket", "tickets"),
         ("cake", "cakes"), ("lamp", "lamps"), ("shirt", "shirts"), ("bag", "bags"),
         ("knife", "knives"), ("loaf", "loaves"), ("candle", "candles"), ("map", "maps")]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
STATES = ["old", "broken", "happy", "tired", "red", "small", "big", "lost", "hungry", "asleep",
          "clean", "empty", "expensive", "new"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
          "october", "november", "december"]

# (weight, template). Slots: country capital language adj food (one country), country2 capital2
# (another), name he his him / name2, relative rel_he, pnoun pn_he, noun other is was has (number
# agreement with noun: be was has; other is an attractor of random number), num item it be_n,
# day next_day,
# month next_month.
TEMPLATES = [
    (3, "the capital of {country} is {capital}"),
    (2, "{capital} is the capital of {country}"),
    (2, "{name} was born in {country} so {he} speaks {language}"),
    (2, "{name} grew up in {capital} and {he} still speaks {language} with {his} {relative}"),
    (1, "when {name} was young {he} lived in {country} and learned to cook {food}"),
    (2, "the {pnoun} who visited the old city of {capital} last year loved {adj} food"),
    (1, "the {pnoun} who lived in {country} for ten years says {pn_he} misses the {food}"),
    (1, "people in {country} speak {language} and many of them love {food}"),
    (1, "{name} moved from {country} to {country2} but {he} still misses the {food} of {capital}"),
    (1, "my {relative} lives in {capital} and {rel_he} sends me {adj} {food} every {month}"),
    (1, "{name} and {name2} flew to {capital} where they ate {food} and spoke {language}"),
    (1, "if you travel to {country} you will hear people speaking {language}"),
    (1, "{name} told {his} {relative} that {he} wants to live in {country} because {he} loves "
        "{food}"),
    (1, "last {month} {name} took a train to {capital} and spoke only {language} for a week"),
    (1, "the president of {country} gave a long speech in {capital} in {language}"),
    (1, "{name} is {adj} and {his} first language is {language}"),
    (1, "after many years in {country2} {name} went home to {capital} and cooked {food} for "
        "{him}self"),
    (2, "the {noun} that the {other} saw yesterday {was} {state}"),
    (2, "the {noun} near the {other} {be} {state}"),
    (1, "the {noun} that {name} found behind the old {other} {has} been {state} for a long time"),
    (1, "the {noun} {name} talked about {be} {state} today"),
    (2, "{name} bought {num} {item} at the market and gave {it} to {his} {relative}"),
    (1, "there {be_n} {num} {item} on the table and {name} wants {it}"),
    (1, "the day after {day} is {next_day}"),
    (1, "the month after {month} is {next_month}"),
    (1, "{name} arrived on {day} and left the next day which was {next_day}"),
    (1, "{name} lost {his} keys so {he} asked {his} {relative} for help and {rel_he} found them"),
    (1, "{name} called {his} {relative} and {rel_he} said that {rel_he} was busy"),
]

# filler sentences: slots drawn from word classes with Zipf-like weights (1 / rank), so common
# words dominate but no single word is a good constant guess
FILLER = {
    "det": "the a this that every my our their no one".split(),
    "adj": ("good new old little big small long great young early important large public bad "
            "strong free dark quiet happy cold warm bright heavy simple").split(),
    "noun": ("time year day way thing life world school family group problem hand part place "
             "week company system question work number night point home water room area money "
             "story fact month study word business side kind head friend door road garden")
    .split(),
    "verb": ("saw found made took wanted used needed liked gave told left kept brought opened "
             "watched followed moved helped carried painted cleaned sold").split(),
    "prep": "in on at near with from behind under after before for".split(),
    "adv": "again today yesterday quickly slowly there here later often now".split(),
    "subj": "i you we they he she it".split(),
}
FILLER_PATTERNS = [
    "det adj noun verb det noun",
    "det noun verb det adj noun prep det noun",
    "det noun prep det noun verb det noun adv",
    "subj verb det adj noun prep det noun adv",
    "subj verb det noun adv",
]
FILLER_SHARE = 0.4


def _zipf_cum(n: int) -> list[float]:
    return np.cumsum(1.0 / np.arange(1, n + 1)).tolist()


def _fact(rng: random.Random, template: str) -> str:
    """Fill one template; slots drawn together so that country, language, pronoun agree."""
    country, capital, language, adj, food = rng.choice(COUNTRIES)
    country2, capital2 = rng.choice([c for c in COUNTRIES if c[0] != country])[:2]
    name, he, his = rng.choice(PEOPLE)
    name2 = rng.choice([p for p in PEOPLE if p[0] != name])[0]
    relative, rel_he = rng.choice(RELATIVES)
    pnoun, pn_he = rng.choice(PERSON_NOUNS)
    plural, other_plural = rng.random() < 0.5, rng.random() < 0.5
    noun, other = rng.choice(NOUNS)[plural], rng.choice(NOUNS)[other_plural]
    k = rng.randrange(len(NUMBERS))
    d, m = rng.randrange(7), rng.randrange(12)
    return template.format(
        country=country, capital=capital, language=language, adj=adj, food=food,
        country2=country2, capital2=capital2, name=name, he=he, his=his,
        him="him" if he == "he" else "her", name2=name2, relative=relative, rel_he=rel_he,
        pnoun=pnoun, pn_he=pn_he, noun=noun, other=other, state=rng.choice(STATES),
        be="are" if plural else "is", was="were" if plural else "was",
        has="have" if plural else "has", num=NUMBERS[k], item=rng.choice(ITEMS)[k > 0],
        it="them" if k else "it", be_n="are" if k else "is", day=DAYS[d],
        next_day=DAYS[(d + 1) % 7], month=MONTHS[m], next_month=MONTHS[(m + 1) % 12])


def demo_corpus(n_sentences: int = 20000, seed: int = 0) -> str:
    """A deterministic, offline English-like corpus (normalised) that rewards memory.

    Fact sentences tie a later word to an earlier one: a capital to its country, a language to a
    birthplace, he/she to a name, was/were to a subject across a relative clause, it/them to a
    number, tuesday to monday. Zipf-weighted filler sentences (40 %) dilute the common words so the
    most-frequent-word baseline stays low. About 400 distinct words; 20,000 sentences are about
    1 MB. Only ``random.Random(seed)`` is used, so the text is the same on every machine.
    """
    rng = random.Random(seed)
    templates = [t for _, t in TEMPLATES]
    template_cum = np.cumsum([w for w, _ in TEMPLATES]).tolist()
    cums = {k: _zipf_cum(len(v)) for k, v in FILLER.items()}
    patterns = [p.split() for p in FILLER_PATTERNS]
    sentences = []
    for _ in range(n_sentences):
        if rng.random() < FILLER_SHARE:
            slots = rng.choice(patterns)
            words = (rng.choices(FILLER[s], cum_weights=cums[s])[0] for s in slots)
            sentences.append(" ".join(words))
        else:
            sentences.append(_fact(rng, rng.choices(templates, cum_weights=template_cum)[0]))
    return " ".join(sentences)


# --------------------------------------------------------------------------------------------
# Datasets


@dataclass
class Dataset:
    """Observations stored compactly: one symbol stream + per-observation offsets.

    Padding to (B, T) happens per batch, so a corpus costs 5 bytes per character, not 5 * max_len
    per observation. Observations are kept in text order; ``batches(shuffle=True)`` shuffles.
    """

    chars: np.ndarray  # uint8 symbol ids (pad 0, space 1, a-z 2..27), observations concatenated
    targets: np.ndarray  # int32 target per char (word id or next-symbol id; 0 = pad = no loss)
    starts: np.ndarray  # int64 start offset of each observation in chars
    lengths: np.ndarray  # int64 length of each observation (<= max_len)
    # bool per observation: it continues the previous one in the source text (``rechunked`` needs it)
    follows: np.ndarray | None = None
    _last_cut: tuple = field(default=(), init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.starts)

    def n_chars(self) -> int:
        return int(self.lengths.sum())

    def sample_runs(self, fraction: float, seed: int = 0) -> "Dataset":
        """About ``fraction`` of the observations: whole runs of contiguous ones, drawn at random
        from ``seed``, kept in text order.

        For data-scaling studies (``TrainConfig.train_fraction``). Runs, so what is kept still reads
        as text (``rechunked`` and stateful lanes apply); drawn from the whole text, not its first
        part, so the kept text is no nearer the scored words than the whole is (the first words of
        the test split lie in the first third of the text, and a prefix of it scored them as if
        they were its own articles).
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if self.follows is None:
            raise ValueError("sample_runs needs follows: which observations continue the previous one")
        run = np.cumsum(~self.follows) - 1  # the run each observation belongs to
        order = np.random.default_rng([2, seed]).permutation(run[-1] + 1)  # not rechunked's stream ([1, seed])
        enough = np.searchsorted(np.cumsum(np.bincount(run)[order]), fraction * len(self)) + 1
        kept = np.flatnonzero(np.isin(run, order[:enough]))  # in text order
        lengths = self.lengths[kept]
        starts = np.cumsum(lengths) - lengths
        pos = np.arange(int(lengths.sum())) + np.repeat(self.starts[kept] - starts, lengths)
        return Dataset(self.chars[pos], self.targets[pos], starts, lengths, self.follows[kept])

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Observations ``idx`` as (B, T) int32 inputs and targets, right-padded with 0.

        T is the longest observation in this batch. One gather through an index matrix; padded
        cells read position 0 and are then zeroed by the mask.
        """
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.lengths[idx]
        cols = np.arange(int(lengths.max()) if len(idx) else 0)
        mask = cols[None, :] < lengths[:, None]
        pos = np.where(mask, self.starts[idx][:, None] + cols[None, :], 0)
        x = np.where(mask, self.chars[pos], 0).astype(np.int32)
        y = np.where(mask, self.targets[pos], 0).astype(np.int32)
        return x, y

    def rechunked(self, seed: int, max_len: int) -> "Dataset":
        """The same text cut at other word boundaries, drawn from ``seed``.

        Each run of observations that are contiguous in the source text keeps its words but starts
        with a random number (1 to all) of its first observation's words, then packs greedily again.
        Training on a new cut each epoch shows a word after other amounts of context, where fixed
        observations show it after the same ones every epoch. Sound for word targets only (a
        position's label does not depend on where its observation starts); no observation reaches
        text outside this split; never fewer observations than before (greedy from a run's start is
        the fewest). The last cut is kept, as an epoch asks for it once per batch.
        """
        if self._last_cut[:2] == (seed, max_len):
            return self._last_cut[2]
        if self.follows is None:
            raise ValueError("rechunked needs follows: which observations continue the previous one")
        word_starts = np.flatnonzero(self.chars == SPACE)
        ends_at = np.append(word_starts, self.starts[-1] + self.lengths[-1])  # word k spans ends_at[k:k+2]
        costs = np.diff(ends_at)
        first_word = np.append(np.searchsorted(word_starts, self.starts), len(word_starts))
        runs = np.append(np.flatnonzero(~self.follows), len(self))
        rng = np.random.default_rng([1, seed])  # not the epoch's permutation stream
        keep = rng.integers(1, first_word[runs[:-1] + 1] - first_word[runs[:-1]] + 1)
        bounds, follows = [], []
        for a, b, j in zip(first_word[runs[:-1]], first_word[runs[1:]], keep):
            cuts = np.concatenate([[a], a + j + pack_words(costs[a + j : b], max_len)[:-1]])
            bounds.append(cuts)
            follows.append(np.arange(len(cuts)) > 0)
        bounds = np.concatenate(bounds)
        ends = np.append(bounds[1:], len(word_starts))
        starts = word_starts[bounds]
        cut = Dataset(self.chars, self.targets, starts, ends_at[ends] - starts, np.concatenate(follows))
        self._last_cut = (seed, max_len, cut)
        return cut

    def batches(self, batch_size: int, shuffle: bool, seed: int = 0,
                drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Consecutive batches, in a seeded random order when ``shuffle`` (vary seed per epoch)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            yield self.batch(order[i : i + batch_size])


@dataclass
class Splits:
    train: Dataset
    valid: Dataset
    test: Dataset
    vocab: Vocab | None  # output words for autocomplete; None for charlm (targets are symbols)
    task: str  # "autocomplete" | "charlm"

    def train_share(self, fraction: float, seed: int = 0) -> "Splits":
        """These splits training on about ``fraction`` of the training text (``Dataset.sample_runs``).

        The vocabulary, validation and test splits stay the whole corpus's, so runs on less text
        are scored on the same words with the same head.
        """
        return self if fraction == 1 else replace(self, train=self.train.sample_runs(fraction, seed))


def pack_words(costs: np.ndarray, max_len: int) -> np.ndarray:
    """Greedy packing of words with ``costs`` (len + 1, each <= max_len) into observations.

    Returns the index of the first word of each observation followed by ``len(costs)``: observation
    k holds words ``bounds[k]:bounds[k+1]``. One ``searchsorted`` per observation finds the last
    word that still fits: the observation ends before the first word that would overflow it.
    """
    if len(costs) and int(costs.max()) > max_len:
        raise ValueError(f"a word costs {int(costs.max())} > max_len={max_len}; drop it first")
    ends = np.concatenate([[0], np.cumsum(costs, dtype=np.int64)])
    search = ends.searchsorted  # the bound method: np.searchsorted's wrapper doubles the loop time
    bounds, i, n = [0], 0, len(costs)
    while i < n:
        i = int(search(int(ends[i]) + max_len, "right")) - 1
        bounds.append(i)
    return np.asarray(bounds, dtype=np.int64)


def _layout(text: str, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Symbols of the kept words, which words were kept, their costs, and observation bounds.

    ``text`` must be normalised: then ``' ' + text`` is exactly the concatenation of
    ``' ' + word``, and word lengths come from the space positions without splitting.
    """
    if max_len < 2:
        raise EdgeRNNError(f"max_len must be >= 2 (a space and a letter), got {max_len}")
    if not text:
        raise EdgeRNNError("no usable words in the text (only a-z survive normalisation)")
    chars = encode_chars(" " + text)
    spaces = np.flatnonzero(chars == SPACE)
    costs = np.diff(np.append(spaces, len(chars)))  # len(word) + 1
    keep = costs <= max_len  # a word of max_len characters or more cannot fit after its space
    if not keep.all():
        chars = chars[np.repeat(keep, costs)]
        costs = costs[keep]
    if len(costs) == 0:
        raise EdgeRNNError(f"no usable words in the text: all are over {max_len - 1} letters")
    return chars, keep, costs, pack_words(costs, max_len)


def _word_types(text: str) -> tuple[list[str], np.ndarray]:
    """Distinct words in alphabetical order, and the type id of every word in the text."""
    words = text.split()
    types = sorted(set(words))
    index = dict(zip(types, range(len(types))))
    ids = np.fromiter(map(index.__getitem__, words), dtype=np.int32, count=len(words))
    return types, ids


def _assign(n_obs: int, seed: int) -> np.ndarray:
    """Split label (0 train, 1 valid, 2 test) per observation, from a seeded permutation."""
    if n_obs < MIN_OBSERVATIONS:
        raise EdgeRNNError(f"corpus too small: {n_obs} observations; need at least "
                           f"{MIN_OBSERVATIONS}")
    n_train, n_valid = int(0.9 * n_obs), int(0.05 * n_obs)
    perm = np.random.default_rng(seed).permutation(n_obs)
    split = np.full(n_obs, 2, dtype=np.int8)
    split[perm[:n_train]] = 0
    split[perm[n_train : n_train + n_valid]] = 1
    return split


def _split(chars: np.ndarray, targets: np.ndarray, lengths: np.ndarray,
           split: np.ndarray) -> list[Dataset]:
    """Cut the full stream into the three splits' own compact streams, keeping text order."""
    char_split = np.repeat(split, lengths)
    out = []
    for k in range(3):
        index = np.flatnonzero(split == k)
        sub = lengths[index]
        starts = np.concatenate([[0], np.cumsum(sub)[:-1]]).astype(np.int64)
        mask = char_split == k
        follows = np.diff(index, prepend=-2) == 1  # observation i + 1 of the text after observation i
        out.append(Dataset(chars[mask], targets[mask], starts, sub.astype(np.int64), follows))
    return out


def _train_vocab(types: list[str], counts: np.ndarray, vocab_size: int) -> tuple[Vocab, np.ndarray]:
    """The ``vocab_size`` most frequent words (ties alphabetical) and a type -> target id table.

    ``types`` is alphabetical, so a stable sort on descending count breaks ties alphabetically.
    Words never seen in training are not in the vocabulary however large ``vocab_size`` is.
    """
    if vocab_size < 1:
        raise EdgeRNNError(f"vocab_size must be >= 1, got {vocab_size}")
    order = np.argsort(-counts, kind="stable")[: min(vocab_size, int((counts > 0).sum()))]
    table = np.full(len(types), UNK, dtype=np.int32)
    table[order] = np.arange(2, 2 + len(order), dtype=np.int32)
    return Vocab.from_counts([types[t] for t in order]), table


def autocomplete_splits(text: str, vocab_size: int, max_len: int = 200, seed: int = 0) -> Splits:
    """The Distill recipe: word-id targets, vocabulary counted on the training split only.

    ``text`` is normalised first (idempotent; about a second for 100 MB).
    """
    text = normalise(text)
    chars, keep, costs, bounds = _layout(text, max_len)
    split = _assign(len(bounds) - 1, seed)
    types, word_ids = _word_types(text)
    word_ids = word_ids[keep]
    word_split = np.repeat(split, np.diff(bounds))
    counts = np.bincount(word_ids[word_split == 0], minlength=len(types))
    vocab, table = _train_vocab(types, counts, vocab_size)
    targets = np.repeat(table[word_ids], costs)
    lengths = np.add.reduceat(costs, bounds[:-1])
    train, valid, test = _split(chars, targets, lengths, split)
    return Splits(train, valid, test, vocab, "autocomplete")


def _next_symbols(chars: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """targets[t] = chars[t + 1] inside an observation; the last position of each is pad."""
    targets = np.zeros(len(chars), dtype=np.int32)
    targets[:-1] = chars[1:]
    targets[np.cumsum(lengths) - 1] = PAD
    return targets


def charlm_splits(text: str, max_len: int = 200, seed: int = 0) -> Splits:
    """Same observations and split as autocomplete, next-symbol targets, no word vocabulary."""
    chars, _, costs, bounds = _layout(normalise(text), max_len)
    split = _assign(len(bounds) - 1, seed)
    lengths = np.add.reduceat(costs, bounds[:-1])
    train, valid, test = _split(chars, _next_symbols(chars, lengths), lengths, split)
    return Splits(train, valid, test, None, "charlm")


def make_splits(text: str, task: str, vocab_size: int, max_len: int = 200, seed: int = 0) -> Splits:
    if task == "autocomplete":
        return autocomplete_splits(text, vocab_size, max_len, seed)
    if task == "charlm":
        return charlm_splits(text, max_len, seed)
    raise EdgeRNNError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def encode_autocomplete(text: str, vocab: Vocab, max_len: int = 200) -> Dataset:
    """All observations of ``text`` (text order) labelled with an existing vocabulary.

    For evaluating a trained model on another corpus, and for checking the labels by hand.
    """
    text = normalise(text)
    chars, keep, costs, bounds = _layout(text, max_len)
    types, word_ids = _word_types(text)
    table = np.fromiter(map(vocab.id, types), dtype=np.int32, count=len(types))
    targets = np.repeat(table[word_ids[keep]], costs)
    lengths = np.add.reduceat(costs, bounds[:-1])
    return Dataset(chars, targets, np.cumsum(lengths) - lengths, lengths)


def encode_charlm(text: str, max_len: int = 200) -> Dataset:
    """All observations of ``text`` (text order) with next-symbol targets."""
    chars, _, costs, bounds = _layout(normalise(text), max_len)
    lengths = np.add.reduceat(costs, bounds[:-1])
    return Dataset(chars, _next_symbols(chars, lengths), np.cumsum(lengths) - lengths, lengths)


def most_frequent_baseline(split: Splits) -> float:
    """Test accuracy of always predicting the most frequent training target.

    Counted per position over non-pad targets, like the article's accuracy: for autocomplete the
    prediction is a real word (never ``<unk>``), so unknown positions count as misses; for charlm
    it is the most frequent next symbol.
    """
    counts = np.bincount(split.train.targets, minlength=2)
    counts[PAD] = 0
    if split.task == "autocomplete":
        counts[UNK] = 0
    guess = int(np.argmax(counts))
    scored = split.test.targets[split.test.targets != PAD]
    return float(np.mean(scored == guess)) if len(scored) else 0.0
