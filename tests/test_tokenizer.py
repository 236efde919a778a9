"""Tokenizer tests against independent references: a brute-force BPE trainer written here (full recount
per merge), tiktoken given our merges as ranks, hand-computed ids, and exact round trips."""
import collections
import itertools
import json
import os
import random
import tempfile

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import regex
import tiktoken

import tokenizer as tk
from errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(ROOT, "assets", "tinystories", "train.txt")
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
SETTINGS = hypothesis.settings(max_examples=60, deadline=None, derandomize=True)


def stories(n_bytes):
  with open(STORIES, "rb") as f:
    return f.read(n_bytes).decode("utf-8", errors="ignore")


def write(tmp_path, name, text):
  p = tmp_path / name
  p.write_bytes(text.encode("utf-8"))
  return str(p)


# ---------------------------------------------------------------------------------------------------
# Reference: brute-force BPE, a full recount of every pair each merge.


def split_specials(text, specials):
  """Left to right; at each position the longest special that starts there wins."""
  by_len = sorted(specials, key=len, reverse=True)
  parts, start, i = [], 0, 0
  while i < len(text):
    s = next((s for s in by_len if text.startswith(s, i)), None)
    if s is None:
      i += 1
      continue
    parts.append(text[start:i])
    i = start = i + len(s)
  parts.append(text[start:])
  return parts


def brute_force_bpe(text, vocab_size, specials):
  counts = collections.Counter()
  for part in split_specials(text, specials):
    counts.update(regex.findall(GPT2_PAT, part))
  words = {tuple(bytes([b]) for b in w.encode("utf-8")): c for w, c in counts.items()}
  vocab = {s.encode("utf-8") for s in specials} | {bytes([b]) for b in range(256)}
  merges = []
  while len(vocab) < vocab_size:
    pairs = collections.Counter()
    for w, c in words.items():
      for p in zip(w, w[1:]):
        pairs[p] += c
    if not pairs:
      break
    best = max(pairs, key=lambda p: (pairs[p], p))  # ties: the lexicographically greater pair
    merges.append(best)
    vocab.add(best[0] + best[1])
    new_words = collections.Counter()
    for w, c in words.items():
      out, i = [], 0
      while i < len(w):
        if i + 1 < len(w) and (w[i], w[i + 1]) == best:
          out.append(best[0] + best[1])
          i += 2
        else:
          out.append(w[i])
          i += 1
      new_words[tuple(out)] += c
    words = new_words
  return merges


def unicode_text(seed, n):
  """Mixed scripts, digits, emoji, punctuation and whitespace runs."""
  r = random.Random(seed)
  pieces = ["héllo", "naïve", "Ж", "Москва", "東京", "日本語", "🙂", "👩‍👩‍👧", "🚀🚀", "12", "3.14",
            "'s", "'ll", " ", "  ", "\n", "\n\n", "\t", "   \n ", "!?", "--", "x", "ab", "\u00a0", "é"]
  return "".join(r.choice(pieces) for _ in range(n))


# ---------------------------------------------------------------------------------------------------
# Training.


CORPORA = {
    "ties": ("low low low low low lower lower widest widest widest newest newest newest newest newest "
             "newest", [], 300),
    "specials": ("the cat<|endoftext|>the cat sat<|endoftext|><|endoftext|>on the mat, the end" * 5 +
                 "a<|pad|>b", [EOT, "<|pad|>", EOT + EOT], 320),
    "unicode": (unicode_text(0, 400), ["🙂"], 400),
    "whitespace": (unicode_text(2, 400), [], 400),
}


@pytest.mark.parametrize("name", sorted(CORPORA))
@pytest.mark.parametrize("workers", [1, 2])
def test_train_matches_brute_force(tmp_path, monkeypatch, name, workers):
  text, specials, vocab_size = CORPORA[name]
  path = write(tmp_path, "c.txt", text)
  if workers > 1:
    monkeypatch.setattr(tk, "_CHUNK_BYTES", 40)  # chunks cut between specials or words
  vocab, merges = tk.train_bpe(path, vocab_size, specials, num_workers=workers, progress=False)
  assert merges == brute_force_bpe(text, vocab_size, specials)
  # ids: specials in order, then the 256 bytes, then one per merge
  assert [vocab[i] for i in range(len(specials))] == [s.encode() for s in specials]
  assert [vocab[len(specials) + b] for b in range(256)] == [bytes([b]) for b in range(256)]
  assert [vocab[len(specials) + 256 + i] for i in range(len(merges))] == [a + b for a, b in merges]


@pytest.mark.slow
def test_train_matches_brute_force_on_stories_in_parallel(tmp_path, monkeypatch):
  text = stories(150_000)
  path = write(tmp_path, "s.txt", text)
  monkeypatch.setattr(tk, "_CHUNK_BYTES", 8_000)  # many chunks, cut at <|endoftext|>
  vocab, merges = tk.train_bpe(path, 257 + 250, [EOT], num_workers=2, progress=False)
  assert merges == brute_force_bpe(text, 257 + 250, [EOT])
  assert len(vocab) == 257 + 250


@hypothesis.given(st.lists(st.one_of(st.text("ab c\n!é🙂", max_size=12), st.sampled_from(["<s>", "<s><s>"])),
                           max_size=20).map("".join))
@SETTINGS
def test_train_matches_brute_force_random(text):
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "r.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    _, merges = tk.train_bpe(path, 280, ["<s>", "<s><s>"], num_workers=1, progress=False)
  assert merges == brute_force_bpe(text, 280, ["<s>", "<s><s>"])


def test_no_merge_crosses_a_special_or_pretoken(tmp_path):
  # "a" and "b" are adjacent only across a special token or a pre-token boundary ("a" | " b")
  text = "a<|endoftext|>b " * 50 + "a b " * 50 + "xy xy "
  path = write(tmp_path, "x.txt", text)
  vocab, merges = tk.train_bpe(path, 400, [EOT], num_workers=1, progress=False)
  pretokens = {w.encode() for part in text.split(EOT) for w in regex.findall(GPT2_PAT, part)}
  assert merges  # training ran until every pre-token was a single token
  for a, b in merges:
    assert any(a + b in w for w in pretokens), (a, b)
  assert set(pretokens) <= set(vocab.values())


# ---------------------------------------------------------------------------------------------------
# Encoding: tiktoken with our vocab as ranks is the reference.


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  d = tmp_path_factory.mktemp("tok")
  text = stories(300_000) + unicode_text(1, 20_000)
  path = d / "train.txt"
  path.write_bytes(text.encode("utf-8"))
  vocab, merges = tk.train_bpe(str(path), 1500, [EOT, "<pad>"], num_workers=2, progress=False)
  return tk.Tokenizer(vocab, merges, [EOT, "<pad>"])


@pytest.fixture(scope="module")
def reference(trained):
  specials = {EOT: 0, "<pad>": 1}
  ranks = {b: i for i, b in trained.vocab.items() if i >= len(specials)}
  return tiktoken.Encoding("ours", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens=specials)


@pytest.mark.parametrize("text", [
    "", "Once upon a time, there was a little girl named Lily.",
    "   leading and trailing   ", "tabs\t\tand\n\n\nnewlines \n \n", "x" + " " * 17 + "y",
    "🙂🙂 emoji 👩‍👩‍👧 and 🚀", "naïve café, Москва, 東京 12345 3.14 don't we'll",
    "a<|endoftext|>b<pad><|endoftext|><|endoftext|>", "<|endoftext|>", " <|endoftext|> ",
    "\u00a0\u2003 unicode spaces \u3000",
])
def test_encode_matches_tiktoken(trained, reference, text):
  ids = trained.encode(text)
  assert ids == reference.encode(text, allowed_special="all")
  assert trained.decode(ids) == text


def test_encode_matches_tiktoken_on_stories_and_unicode(trained, reference):
  for text in [stories(200_000)[100_000:], unicode_text(7, 5_000)]:
    assert trained.encode(text) == reference.encode(text, allowed_special="all")


@hypothesis.given(st.lists(st.one_of(st.text(), st.sampled_from([EOT, "<pad>", "  ", "\n\n", "🙂"])),
                           max_size=8).map("".join))
@SETTINGS
def test_encode_matches_tiktoken_random(trained, reference, text):
  ids = trained.encode(text)
  assert ids == reference.encode(text, allowed_special="all")
  assert trained.decode(ids) == text


def test_overlapping_specials_longest_first():
  specials = [EOT, EOT + EOT]
  vocab = {0: EOT.encode(), 1: (EOT + EOT).encode()} | {2 + b: bytes([b]) for b in range(256)}
  tok = tk.Tokenizer(vocab, [], specials)
  text = "a" + EOT * 3 + "b" + EOT
  assert tok.encode(text) == [2 + ord("a"), 1, 0, 2 + ord("b"), 0]
  assert tok.decode(tok.encode(text)) == text
  assert tok.token_id(EOT) == 0 and tok.special_tokens == specials


def test_decode_invalid_utf8_becomes_replacement_char(trained):
  byte_ff = trained.encode("a")[0] - ord("a") + 0xFF  # the byte ids are contiguous
  assert trained.vocab[byte_ff] == b"\xff"
  assert trained.decode([byte_ff]) == "\ufffd"
  assert trained.decode(trained.encode("ok") + [byte_ff]) == "ok\ufffd"


# ---------------------------------------------------------------------------------------------------
# Streaming and file encoding: same ids as encoding the whole text.


def chopped(text, seed, max_len):
  r = random.Random(seed)
  i = 0
  while i < len(text):
    n = r.randint(1, max_len)
    yield text[i:i + n]
    i += n


def test_encode_iterable_over_file_equals_encode(trained, tmp_path):
  text = stories(60_000) + unicode_text(3, 2_000) + EOT + EOT + "x"
  path = write(tmp_path, "t.txt", text)
  whole = trained.encode(text)
  with open(path, encoding="utf-8") as f:
    assert list(trained.encode_iterable(f)) == whole
  # pieces that cut words, whitespace runs and "<|endoftext|>" anywhere, flushed often
  for seed in range(3):
    assert list(trained.encode_iterable(chopped(text, seed, 40), flush_chars=50)) == whole


@pytest.fixture(scope="module")
def spaced(trained):
  """Specials that hold whitespace, so a cut before a space could fall inside one."""
  return tk.Tokenizer(trained.vocab, trained.merges, [EOT, "<pad>", "<end of text>", "\n\n"])


@hypothesis.given(st.lists(st.one_of(st.text(max_size=6),
                                     st.sampled_from([EOT, "<end of text>", " ", "\n", "a.", "<end"])),
                           max_size=30), st.integers(1, 20))
@SETTINGS
def test_encode_iterable_random_cuts(spaced, pieces, flush):
  assert list(spaced.encode_iterable(pieces, flush_chars=flush)) == spaced.encode("".join(pieces))


def test_encode_iterable_waits_for_a_special_that_may_hold_a_cut(spaced):
  pieces = ["x a<end of", " text> y<end", " of text>", "\n", "\nz"]
  assert list(spaced.encode_iterable(pieces, flush_chars=1)) == spaced.encode("".join(pieces))
  assert spaced.encode("".join(pieces)).count(spaced.token_id("<end of text>")) == 2


def test_encode_iterable_is_lazy(trained):
  def endless():
    for i, line in enumerate(itertools.cycle(stories(20_000).splitlines(keepends=True))):
      assert i < 10_000, "encode_iterable read far more input than it needed"
      yield line

  first = list(itertools.islice(trained.encode_iterable(endless()), 100))
  assert first == trained.encode(stories(20_000))[:100]


@pytest.mark.parametrize("workers", [1, 2])
def test_encode_file_equals_encode(trained, tmp_path, monkeypatch, workers):
  monkeypatch.setattr(tk, "_CHUNK_BYTES", 3_000)  # many chunks
  text = stories(80_000) + "no specials here " * 300 + unicode_text(4, 2_000) + EOT + EOT
  src, out = write(tmp_path, "in.txt", text), str(tmp_path / "out.bin")
  n = tk.encode_file(trained, src, out, num_workers=workers, progress=False)
  got = np.fromfile(out, dtype="<u2")
  assert n == len(got) and got.tolist() == trained.encode(text)
  assert sorted(os.listdir(tmp_path)) == ["in.txt", "out.bin"]  # the temporary file is gone


def test_encode_file_from_an_unguarded_script_does_not_rerun_it(trained, tmp_path):
  """The worker processes must not import the caller's script: a script without the
  `if __name__ == "__main__"` guard used to crash ('bootstrapping phase'), and a guarded one paid
  its imports (JAX, for train.py and speedrun.py) again in the fork server."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  trained.save(str(tmp_path / "tok.json"))
  src = write(tmp_path, "in.txt", stories(20_000))
  script = write(tmp_path, "script.py", f"""import sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
import tokenizer
print("script body ran", flush=True)
tok = tokenizer.Tokenizer.load({str(tmp_path / "tok.json")!r})
print(tokenizer.encode_file(tok, {src!r}, {str(tmp_path / "out.bin")!r}, num_workers=2, progress=False))
""")
  r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.count("script body ran") == 1
  assert np.fromfile(tmp_path / "out.bin", dtype="<u2").tolist() == trained.encode(stories(20_000))


def test_encode_file_with_overlapping_specials(trained, tmp_path, monkeypatch):
  monkeypatch.setattr(tk, "_CHUNK_BYTES", 500)
  tok = tk.Tokenizer(trained.vocab, trained.merges, [EOT, "<pad>", EOT + EOT])
  assert tok.token_id(EOT + EOT) == 1500  # a special missing from the vocab gets the next id
  r = random.Random(0)
  text = "".join(s + EOT * r.randint(1, 3) + r.choice(["", "\n"]) for s in stories(40_000).split(EOT))
  src, out = write(tmp_path, "in.txt", text), str(tmp_path / "out.bin")
  assert tk.encode_file(tok, src, out, num_workers=2, progress=False) > 0
  assert np.fromfile(out, dtype="<u2").tolist() == tok.encode(text)
  assert tok.encode(EOT * 3) == [1500, 0]


def test_encode_file_cuts_between_words(spaced, tmp_path, monkeypatch):
  monkeypatch.setattr(tk, "_CHUNK_BYTES", 64)  # cuts inside whitespace runs would show up here
  text = unicode_text(9, 3_000) + "a<end of text>b. <end of text> x" * 40
  src, out = write(tmp_path, "in.txt", text), str(tmp_path / "out.bin")
  tk.encode_file(spaced, src, out, num_workers=2, progress=False)
  assert np.fromfile(out, dtype="<u2").tolist() == spaced.encode(text)


def test_encode_file_uint32_when_vocab_is_large(tmp_path):
  vocab = {b: bytes([b]) for b in range(256)} | {70_000: b"<big>"}
  tok = tk.Tokenizer(vocab, [], ["<big>"])
  assert tok.vocab_size == 70_001
  assert tk.token_dtype(65_536) == np.uint16 and tk.token_dtype(65_537) == np.uint32
  src, out = write(tmp_path, "in.txt", "hi<big>"), str(tmp_path / "out.bin")
  assert tk.encode_file(tok, src, out, num_workers=1, progress=False) == 3
  assert np.fromfile(out, dtype="<u4").tolist() == [ord("h"), ord("i"), 70_000]


# ---------------------------------------------------------------------------------------------------
# Files.


def test_save_load_round_trip(trained, tmp_path):
  path = str(tmp_path / "tokenizer.json")
  trained.save(path)
  with open(path) as f:
    assert json.load(f)["format"] == tk.FORMAT
  back = tk.Tokenizer.load(path)
  assert back.vocab == trained.vocab and back.merges == trained.merges
  assert back.special_tokens == trained.special_tokens
  text = stories(20_000) + unicode_text(5, 500) + EOT
  assert back.encode(text) == trained.encode(text)


def gpt2_byte_chars():
  """GPT-2's byte -> printable character map, as published: printable Latin-1 maps to itself, the other
  bytes to U+0100.. in byte order (so space is 'Ġ' and newline 'Ċ')."""
  printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def test_from_files_gpt2_style(tmp_path):
  m = gpt2_byte_chars()
  assert m[32] == "Ġ" and m[10] == "Ċ" and m[0] == "Ā"
  vocab = {m[b]: b for b in range(256)}
  # merged tokens get ids in an order unlike their merge ranks: encoding must follow merges.txt
  vocab.update({"th": 256, "ll": 257, "hell": 258, "hello": 259, "<|endoftext|>": 260, "he": 262,
                "Ġt": 299, "Ġthe": 300})
  (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
  (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\nĠt he\nl l\nhe ll\nhell o\nt h\n",
                                       encoding="utf-8")
  tok = tk.Tokenizer.from_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), [EOT])
  assert tok.encode(" the hello\n") == [300, 32, 259, 10]
  assert tok.encode("the") == [ord("t"), 262]  # (h, e) ranks before (t, h) though "th" has the lower id
  assert tok.encode("ell<|endoftext|>") == [ord("e"), 257, 260]
  assert tok.decode([300, 259, 260]) == " thehello<|endoftext|>"


# ---------------------------------------------------------------------------------------------------
# Errors: one UserError naming the problem.


def test_errors(tmp_path, trained):
  good = write(tmp_path, "good.txt", "hello world")
  with pytest.raises(UserError, match="at least 256"):
    tk.train_bpe(good, 256, [EOT], progress=False)
  with pytest.raises(UserError, match="does not exist"):
    tk.train_bpe(str(tmp_path / "missing.txt"), 300, [], progress=False)
  with pytest.raises(UserError, match="cannot read"):
    tk.train_bpe(str(tmp_path), 300, [], progress=False)  # a directory
  bad = tmp_path / "latin1.txt"
  bad.write_bytes(b"ab " * 500 + "café".encode("latin-1") + b" more")  # several chunks with 2 workers
  with pytest.raises(UserError, match="byte offset 1503"):
    tk.train_bpe(str(bad), 300, [], num_workers=2, progress=False)
  for workers in [1, 2]:
    with pytest.raises(UserError, match="byte offset 1503"):
      tk.encode_file(trained, str(bad), str(tmp_path / "o.bin"), num_workers=workers, progress=False)
    assert not [f for f in os.listdir(tmp_path) if f.startswith("o.bin")]  # no half-written output
  with pytest.raises(UserError, match="does not exist"):
    tk.encode_file(trained, str(tmp_path / "missing.txt"), str(tmp_path / "o.bin"), progress=False)
  for bad_id in [10**6, -1]:
    with pytest.raises(UserError, match="not in the vocab"):
      trained.decode([5, bad_id])
  with pytest.raises(UserError, match="uint32"):
    tk.token_dtype(2**33)
  with pytest.raises(UserError, match="not a special token"):
    trained.token_id("<nope>")


def test_load_errors(trained, tmp_path):
  path = tmp_path / "tokenizer.json"
  trained.save(str(path))
  full = path.read_text()
  cases = {
      "truncated": (full[:len(full) // 2], "corrupt"),
      "other format": (json.dumps({"model": {"type": "BPE"}}), "not a byte-bpe-tokenizer"),
      "newer version": (full.replace('"version": 1', '"version": 99'), "version 99"),
      "bad hex": (full.replace('"vocab": {', '"vocab": {"9999": "zz", ', 1), "corrupt"),
  }
  for name, (content, msg) in cases.items():
    path.write_text(content)
    with pytest.raises(UserError, match=msg) as e:
      tk.Tokenizer.load(str(path))
    assert "re-run" in str(e.value), name
  with pytest.raises(UserError, match="does not exist"):
    tk.Tokenizer.load(str(tmp_path / "nope.json"))
