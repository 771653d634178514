"""The fuzz suite's inputs (used by tests/test_fuzz_data.py): several hundred malformed data files
in every supported format, generated from a seed. A :class:`Case` writes its file(s) into a
folder and says what ``pal-mm`` must do with them."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SEED = int(os.environ.get("PAL_MM_FUZZ_SEED", "1234"))  # another seed: other files, same checks
COLUMNS = ("user_id", "prompt", "chosen", "rejected")


@dataclass
class Case:
    """One fuzzed input: ``write(dir) -> data path`` makes the file(s); ``expect`` is "error"
    (malformed: must be refused), "ok" (valid: must train) or "any" (random damage)."""

    name: str
    write: Callable[[Path], Path]
    expect: str
    command: str = "train"  # or "pal-reference" / "pickapic" (pal-mm convert)
    huge: bool = False  # float32-finite but huge values: divergence is the training loop's to catch
    out: Callable[[Path], Path] | None = None  # a special output path
    args: Callable[[Path], list[str]] | None = None  # more arguments
    lead: bool = False  # a case the CLI/training side (not the data side) must handle


# ----- writers --------------------------------------------------------------------------------
def base_rows(rng: random.Random, users=3, per_user=4, dp=3, di=4) -> list[dict]:
    vec = lambda d: [round(rng.uniform(-1, 1), 4) for _ in range(d)]  # noqa: E731
    return [{"user_id": f"u{u}", "prompt": vec(dp), "chosen": vec(di), "rejected": vec(di)} for u in range(users) for _ in range(per_user)]


def jsonl_text(rows) -> str:
    return "".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows)


def writer(fmt: str, rows: list, name: str = "d") -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        path = d / (name if fmt == "saved" else f"{name}.{fmt}")
        if fmt == "jsonl":
            path.write_text(jsonl_text(rows))
        elif fmt == "json":
            path.write_text(json.dumps(rows))
        elif fmt == "csv":
            import csv

            with open(path, "w", newline="") as fh:
                w = csv.writer(fh)
                cols = list(dict.fromkeys(k for r in rows for k in r))
                w.writerow(cols)
                w.writerows([[r.get(c, "") for c in cols] for r in rows])
        elif fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            import datasets

            datasets.Dataset.from_list(rows).save_to_disk(str(path))
        return path
    return write


def then(base: Callable[[Path], Path], edit: Callable[[Path], Any]) -> Callable[[Path], Path]:
    """Write with ``base``, then change what it wrote (``edit(path)``)."""
    return lambda d: (lambda path: edit(path) and False or path)(base(d))


def raw(name: str, data: bytes | str) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        (d / name).write_bytes(data.encode() if isinstance(data, str) else data)
        return d / name
    return write


def mutated(base: Callable[[Path], Path], mutate: Callable[[bytes], bytes], pattern: str = "*") -> Callable[[Path], Path]:
    """Serialise with ``base``, then damage the bytes of the file (of a saved dataset: its
    files matching ``pattern``)."""
    def edit(path: Path) -> None:
        for f in sorted(path.glob(pattern)) if path.is_dir() else [path]:
            f.write_bytes(mutate(f.read_bytes()))
    return then(base, edit)


def flip(rng: random.Random, n: int) -> Callable[[bytes], bytes]:
    """Set ``n`` random bytes (positions relative to the length) to random values."""
    picks = [(rng.random(), rng.randrange(256)) for _ in range(n)]

    def damage(data: bytes) -> bytes:
        b = bytearray(data)
        for pos, val in picks if b else ():
            b[int(pos * len(b))] = val
        return bytes(b)
    return damage


def png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


# ----- the cases ------------------------------------------------------------------------------
BAD_IDS = [None, "", "  ", True, 1.5, [1], {"a": 1}, float("nan")]
BAD_CONTENT = [None, "", [], float("nan"), {"a": 1}, 5, True, [True] * 4, ["a"] * 4, [[1.0]] * 4, [1.0, 2.0],
               [1e39, 0, 0, 0], [0, -1e39, 0, 0], [0, float("inf"), 0, 0], [float("nan")] * 4, [10**400, 0, 0, 0],
               "some text", "missing.png", "n" * 300 + ".png", "bad\x00.png", [{"role": "user", "content": "hi"}],
               [{"role": "user", "content": 5}]]
HUGE = [[3.0e38, 0, 0, 0], [1e30, -1e30, 1e30, -1e30], [3.4e38] * 4]


def semantic_cases(rng: random.Random) -> list[Case]:
    cases = []
    for fmt in ("jsonl", "json", "parquet", "saved"):
        rows = base_rows(rng)
        cases.append(Case(f"{fmt}/valid", writer(fmt, rows), "ok"))
        cases.append(Case(f"{fmt}/valid-int-ids", writer(fmt, [{**r, "user_id": i % 3} for i, r in enumerate(rows)]), "ok"))
        cases.append(Case(f"{fmt}/valid-group", writer(fmt, [{**r, "group": "g" + r["user_id"]} for r in rows]), "ok"))
        cases.append(Case(f"{fmt}/valid-extra-column", writer(fmt, [{**r, "note": "x"} for r in rows]), "ok"))
        cases += [Case(f"{fmt}/user_id-{i}", writer(fmt, _put(rows, rng, "user_id", value)), "error") for i, value in enumerate(BAD_IDS)]
        cases.append(Case(f"{fmt}/mixed-id-types", writer(fmt, _set(rows, "user_id", 0, at=5)), "error"))
        for col in ("prompt", "chosen", "rejected"):
            for i, value in enumerate(BAD_CONTENT):
                if fmt != "jsonl" and i % 2:  # every value in jsonl, every other one elsewhere
                    continue
                cases.append(Case(f"{fmt}/{col}-{i}", writer(fmt, _put(rows, rng, col, value)), "error"))
            for i, value in enumerate(HUGE):
                cases.append(Case(f"{fmt}/{col}-huge-{i}", writer(fmt, _put(rows, rng, col, value[: 3 if col == "prompt" else 4])),
                                  "any", huge=True))
        cases += [Case(f"{fmt}/no-{col}", writer(fmt, _drop(rows, col)), "error") for col in COLUMNS]
        zero = writer(fmt, []) if fmt in ("jsonl", "json") else then(writer(fmt, rows[:1]), lambda p: _empty_table(fmt, p, rows))
        cases.append(Case(f"{fmt}/zero-rows", zero, "error"))
        cases.append(Case(f"{fmt}/group-null", writer(fmt, _set(_set(rows, "group", "g"), "group", None, at=3)), "error"))
        cases.append(Case(f"{fmt}/group-float", writer(fmt, _set(rows, "group", 1.5)), "error"))
    for fmt in ("jsonl", "json"):  # shapes only JSON can hold
        rows = base_rows(rng)
        cases.append(Case(f"{fmt}/group-from-row-2", writer(fmt, _drop(_set(rows, "group", "g"), "group", at=0)), "error"))
        cases.append(Case(f"{fmt}/group-missing-row-4", writer(fmt, _drop(_set(rows, "group", "g"), "group", at=3)), "error"))
        cases.append(Case(f"{fmt}/column-missing-row-2", writer(fmt, _drop(rows, "rejected", at=1)), "error"))
        cases.append(Case(f"{fmt}/row-is-list", writer(fmt, rows[:2] + [[1, 2]]), "error"))
        cases.append(Case(f"{fmt}/row-is-string", writer(fmt, rows[:2] + (['"row"'] if fmt == "jsonl" else ["row"])), "error"))
    return cases


def _set(rows: list[dict], col: str, value: Any, at: int | None = None) -> list[dict]:
    """``rows`` with ``col`` set to ``value`` in row ``at`` (every row when None)."""
    return [{**r, col: value} if at in (None, i) else r for i, r in enumerate(rows)]


def _drop(rows: list[dict], col: str, at: int | None = None) -> list[dict]:
    """``rows`` without ``col`` in row ``at`` (every row when None)."""
    return [{k: v for k, v in r.items() if k != col} if at in (None, i) else r for i, r in enumerate(rows)]


def _put(rows: list[dict], rng: random.Random, col: str, value: Any) -> list[dict]:
    return _set(rows, col, value, rng.randrange(len(rows)))


def _empty_table(fmt: str, path: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows).slice(0, 0)
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        import datasets

        shutil.rmtree(path)
        datasets.Dataset(table).save_to_disk(str(path))


def text_cases(rng: random.Random) -> list[Case]:
    rows = base_rows(rng)
    good_jsonl, good_json = jsonl_text(rows), json.dumps(rows)
    first = json.dumps(rows[0])
    cases = [
        Case("jsonl/bom", raw("d.jsonl", b"\xef\xbb\xbf" + good_jsonl.encode()), "ok"),
        Case("json/bom", raw("d.json", b"\xef\xbb\xbf" + good_json.encode()), "ok"),
        Case("jsonl/crlf", raw("d.jsonl", good_jsonl.replace("\n", "\r\n")), "ok"),
        Case("jsonl/blank-lines", raw("d.jsonl", good_jsonl.replace("\n", "\n\n")), "ok"),
        Case("jsonl/empty", raw("d.jsonl", b""), "error"),
        Case("json/empty", raw("d.json", b""), "error"),
        Case("json/not-a-list", raw("d.json", json.dumps({"rows": rows})), "error"),
        Case("jsonl/duplicate-key", raw("d.jsonl", good_jsonl + first[:-1] + ', "user_id": "v"}\n'), "error"),
        Case("json/duplicate-key", raw("d.json", "[" + first[:-1] + ', "prompt": [1, 2, 3]}]'), "error"),
        Case("jsonl/int-5000-digits", raw("d.jsonl", good_jsonl + first.replace('"u0"', "1" * 5000) + "\n"), "error"),
        Case("json/int-5000-digits", raw("d.json", good_json[:-1] + ", " + first.replace("[", "[" + "9" * 5000 + ", ", 1) + "]"), "error"),
        Case("jsonl/int-1e309", raw("d.jsonl", good_jsonl.replace("0.", "1" + "0" * 309 + ".", 1)), "error"),
        Case("jsonl/float-1e309", raw("d.jsonl", good_jsonl + first.replace("[", "[1e309, ", 1) + "\n"), "error"),
        Case("jsonl/NaN-literal", raw("d.jsonl", good_jsonl.replace("0.", "NaN, 0.", 1)), "error"),
        Case("jsonl/Infinity-literal", raw("d.jsonl", good_jsonl.replace("-0.", "-Infinity, -0.", 1)), "error"),
        Case("jsonl/not-json", raw("d.jsonl", good_jsonl + "{not json\n"), "error"),
        Case("jsonl/NUL", raw("d.jsonl", good_jsonl[:40] + "\x00" + good_jsonl[40:]), "error"),
        Case("jsonl/trailing-garbage", raw("d.jsonl", good_jsonl + "}}}\n"), "error"),
        Case("txt/unsupported-suffix", raw("d.txt", good_jsonl), "error"),
    ]
    for depth in (1000, 2000, 5000, 50000):
        nest = "[" * depth + "]" * depth
        cases.append(Case(f"jsonl/depth-{depth}", raw("d.jsonl", good_jsonl + '{"user_id": "u", "prompt": ' + nest + "}\n"), "error"))
        cases.append(Case(f"json/depth-{depth}", raw("d.json", nest), "error"))
    for fmt, text in (("jsonl", good_jsonl), ("json", good_json)):
        data = text.encode()
        for i in range(6):  # invalid UTF-8 at a random place
            pos = rng.randrange(len(data))
            bad = bytes([rng.choice([0x80, 0xC3, 0xE2, 0xF0, 0xFF, 0xFE])])
            cases.append(Case(f"{fmt}/non-utf8-{i}", raw(f"d.{fmt}", data[:pos] + bad + data[pos:]), "error"))
        cases += [Case(f"{fmt}/truncated-{i}", raw(f"d.{fmt}", data[: rng.randrange(1, len(data) - 2)]), "any")
                  for i in range(6)]
        cases += [Case(f"{fmt}/flip-{i}", mutated(raw(f"d.{fmt}", data), flip(rng, 1 + i % 4)), "any") for i in range(12)]
    return cases


def csv_cases(rng: random.Random) -> list[Case]:
    head = "user_id,prompt,chosen,rejected\n"
    good = head + "".join(f"u{i % 3},prompt {i},answer a{i},answer b{i}\n" for i in range(12))
    cases = [  # text columns: the precomputed encoder refuses them (a clean error too)
        Case("csv/text", raw("d.csv", good), "error"),
        Case("csv/bom", raw("d.csv", b"\xef\xbb\xbf" + good.encode()), "error"),
        Case("csv/empty", raw("d.csv", ""), "error"),
        Case("csv/header-only", raw("d.csv", head), "error"),
        Case("csv/ragged-short", raw("d.csv", good + "u1,p,a\n"), "error"),
        Case("csv/ragged-long", raw("d.csv", good + "u1,p,a,b,c\n"), "error"),
        Case("csv/duplicate-header", raw("d.csv", "user_id,prompt,prompt,chosen,rejected\nu,p,q,a,b\n"), "error"),
        Case("csv/field-200KiB", raw("d.csv", good + f"u1,{'x' * 200 * 1024},a,b\n"), "error"),
        Case("csv/field-20MiB", raw("d.csv", good + f"u1,{'x' * 17 * 2**20},a,b\n"), "error"),
        Case("csv/unterminated-quote", raw("d.csv", good + 'u1,"p,a,b\n'), "error"),
        Case("csv/quote-garbage", raw("d.csv", good + 'u1,"p"x,a,b\n'), "error"),
        Case("csv/empty-field", raw("d.csv", good + "u1,,a,b\n"), "error"),
        Case("csv/missing-column", raw("d.csv", "user_id,prompt,chosen\nu,p,a\n"), "error"),
        Case("csv/NUL", raw("d.csv", good + "u1,p\x00q,a,b\n"), "error"),
    ]
    data = good.encode()
    for i in range(6):
        pos = rng.randrange(len(data))
        cases.append(Case(f"csv/non-utf8-{i}", raw("d.csv", data[:pos] + b"\xff" + data[pos:]), "error"))
    cases += [Case(f"csv/flip-{i}", mutated(raw("d.csv", data), flip(rng, 1 + i % 3)), "any") for i in range(8)]
    return cases


def binary_cases(rng: random.Random) -> list[Case]:
    rows = base_rows(rng)
    cases = [Case("parquet/zero-bytes", raw("d.parquet", b""), "error"),
             Case("parquet/magic-only", raw("d.parquet", b"PAR1PAR1"), "error"),
             Case("parquet/garbage", raw("d.parquet", b"PAR1" + bytes(rng.randrange(256) for _ in range(300)) + b"PAR1"), "error"),
             Case("parquet/is-jsonl", raw("d.parquet", jsonl_text(rows)), "error"),
             Case("parquet/no-columns", then(raw("d.parquet", b""), lambda p: pq.write_table(pa.table({}), p)), "error"),
             Case("parquet/binary-ids", then(raw("d.parquet", b""), lambda p: pq.write_table(pa.table({
                 "user_id": pa.array([b"\xff"] * 3, pa.binary()), "prompt": [[0.1]] * 3, "chosen": [[0.2]] * 3,
                 "rejected": [[0.3]] * 3}), p)), "error"),
             Case("parquet/timestamps", then(raw("d.parquet", b""), lambda p: pq.write_table(pa.table({
                 "user_id": ["a"], "prompt": pa.array([0], pa.timestamp("s")), "chosen": [[1.0]], "rejected": [[2.0]]}), p)), "error")]
    cases += [Case(f"parquet/truncated-{i}", mutated(writer("parquet", rows), lambda b, k=rng.random(): b[: int(k * len(b))]), "error")
              for i in range(10)]
    cases += [Case(f"parquet/flip-{i}", mutated(writer("parquet", rows), flip(rng, 1 + i % 5)), "any") for i in range(25)]
    cases += [Case(f"saved/flip-{i}", mutated(writer("saved", rows), flip(rng, 2 + i), ("*.arrow", "*.json")[i % 2]), "any")
              for i in range(8)]  # damage the data file, or the state and info files
    saved = writer("saved", rows, "s")
    cases += [Case("saved/empty-dir", lambda d: (d / "s").mkdir() or d / "s", "error"),
              Case("saved/no-state", then(saved, lambda s: (s / "state.json").unlink()), "error"),
              Case("saved/bad-state", then(saved, lambda s: (s / "state.json").write_text("{")), "error"),
              Case("saved/state-list", then(saved, lambda s: (s / "state.json").write_text("[]")), "error"),
              Case("saved/bad-info", then(saved, lambda s: (s / "dataset_info.json").write_text("[1, 2")), "error"),
              Case("saved/no-arrow", then(saved, lambda s: [p.unlink() for p in s.glob("*.arrow")]), "error"),
              Case("saved/arrow-garbage", then(saved, lambda s: [p.write_bytes(b"garbage") for p in s.glob("*.arrow")]), "error"),
              Case("saved/arrow-truncated", then(saved, lambda s: [p.write_bytes(p.read_bytes()[:200]) for p in s.glob("*.arrow")]),
                   "error"),
              Case("saved/dict-no-train", then(saved, lambda p: _as_dict(p, ("a", "b"))), "error"),
              Case("saved/dict-one-split", then(saved, lambda p: _as_dict(p, ("test",))), "ok")]
    return cases


def _as_dict(path: Path, names: tuple[str, ...]) -> None:
    """Replace a saved Dataset by a saved DatasetDict with these split names."""
    import datasets

    ds = datasets.load_from_disk(str(path)).flatten_indices()
    tmp = path.with_name("tmp")
    datasets.DatasetDict({n: ds for n in names}).save_to_disk(str(tmp))
    shutil.rmtree(path)
    tmp.rename(path)


def image_cases(rng: random.Random) -> list[Case]:
    def with_images(names: list[str], fmt: str = "jsonl", make=None) -> Callable[[Path], Path]:
        def write(d: Path) -> Path:
            (d / "ok.png").write_bytes(png())
            (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
            (d / "folder.png").mkdir()
            rows = [{"user_id": f"u{i % 2}", "prompt": "p", "chosen": "ok.png", "rejected": names[i % len(names)]} for i in range(6)]
            return writer(fmt, rows)(d)
        return write

    bad_names = ["missing.png", "x" * 256 + ".png", "y" * 1000 + ".jpg", "a\x00.png", "folder.png", "../../../nope.png",
                 "sub/dir/none.webp", "~nouser_xyz/a.png", "\u2028.png", "CON.png"]
    cases = [Case(f"image/{fmt}/{i}", with_images(["ok.png", n], fmt), "error")
             for fmt in ("jsonl", "csv", "parquet") for i, n in enumerate(bad_names)]
    # images that exist (one of them corrupt): the precomputed encoder refuses image columns cleanly
    cases += [Case("image/valid-paths", with_images(["ok.png"]), "error"),
              Case("image/corrupt-file", with_images(["corrupt.png"]), "error"),
              Case("image/mixed-kinds", with_images(["ok.png", "plain text"]), "error")]
    return cases


def convert_cases(rng: random.Random) -> list[Case]:
    ref = [{"uid": f"u{i % 3}", "prompt": [0.1, 0.2, float(i)], "left": [1.0, 0.0, 0.5, 0.1], "right": [0.0, 1.0, 0.2, 0.3],
            "y": -1 if i % 2 else 1} for i in range(12)]
    cases = [Case(f"convert-ref/{fmt}/valid", writer(fmt, ref), "ok", "pal-reference") for fmt in ("jsonl", "json", "parquet")]
    cases += [Case(f"convert-ref/y-{i}", writer("jsonl", _put(ref, rng, "y", y)), "error", "pal-reference")
              for i, y in enumerate([2, "x", float("nan"), True, None, 0.5, [1], "1e400"])]
    for i, (col, v) in enumerate([("uid", None), ("uid", 1.5), ("left", [1e39, 0, 0, 0]), ("right", [1, 2]), ("prompt", {"a": 1}),
                                  ("left", "missing.png"), ("right", "z" * 300 + ".png"), ("left", [float("inf")] * 4)]):
        cases.append(Case(f"convert-ref/{col}-{i}", writer("jsonl", _put(ref, rng, col, v)), "error", "pal-reference"))
    cases.append(Case("convert-ref/all-ties", writer("jsonl", _set(ref, "y", 0)), "error", "pal-reference"))
    cases.append(Case("convert-ref/no-y", writer("jsonl", _drop(ref, "y")), "error", "pal-reference"))
    cases.append(Case("convert-ref/mixed-uids", writer("jsonl", _set(ref, "uid", 1, at=4)), "error", "pal-reference"))
    cases += [Case(f"convert-ref/flip-{i}", mutated(writer("jsonl", ref), flip(rng, 1 + i % 3)), "any", "pal-reference") for i in range(10)]
    colors = [(i * 40 % 256, 90, 200 - i * 10) for i in range(6)]
    pap = [{"caption": f"c{i}", "jpg_0": png(colors[i % 6]), "jpg_1": png(colors[(i + 1) % 6]), "label_0": float(i % 2),
            "label_1": float(1 - i % 2), "user_id": i % 3} for i in range(9)]
    cases.append(Case("convert-pickapic/parquet/valid", writer("parquet", pap), "ok", "pickapic"))
    for i, (col, v) in enumerate([("label_0", float("nan")), ("label_1", None), ("jpg_0", b"garbage"), ("jpg_1", b"\x89PNG\r\n\x1a\n"),
                                  ("caption", None), ("user_id", None), ("label_0", "x")]):
        cases.append(Case(f"convert-pickapic/parquet/{col}-{i}", writer("parquet", _put(pap, rng, col, v)), "error", "pickapic"))
    cases.append(Case("convert-pickapic/all-ties", writer("parquet", _set(_set(pap, "label_0", 0.5), "label_1", 0.5)), "error", "pickapic"))

    def pap_jsonl(bad: str | None) -> Callable[[Path], Path]:
        def write(d: Path) -> Path:
            for i, c in enumerate(colors):
                (d / f"{i}.png").write_bytes(png(c))
            rows = [{**{k: v for k, v in r.items() if not k.startswith("jpg")}, "jpg_0": f"{i % 6}.png", "jpg_1": f"{(i + 1) % 6}.png"}
                    for i, r in enumerate(pap)]
            if bad is not None:
                rows[4]["jpg_1"] = bad
            return writer("jsonl", rows)(d)
        return write

    cases.append(Case("convert-pickapic/jsonl/valid", pap_jsonl(None), "ok", "pickapic"))
    cases += [Case(f"convert-pickapic/jsonl/path-{i}", pap_jsonl(bad), "error", "pickapic")
              for i, bad in enumerate(["nope.png", "w" * 300 + ".png", "a\x00b.png", "base64:!!", ".", "/"])]
    cases += [Case(f"convert-pickapic/flip-{i}", mutated(pap_jsonl(None), flip(rng, 1 + i)), "any", "pickapic") for i in range(6)]
    # output paths the OS refuses
    cases.append(Case("convert-out/under-a-file", writer("jsonl", ref), "error", "pal-reference",
                      out=lambda d: (d / "blocker").write_text("") or d / "blocker" / "o.jsonl"))
    cases.append(Case("convert-out/name-too-long", writer("jsonl", ref), "error", "pal-reference",
                      out=lambda d: d / ("o" * 300 + ".jsonl")))
    cases.append(Case("convert-out/images-under-a-file", writer("parquet", pap), "error", "pickapic",
                      args=lambda d: (d / "blocker").write_text("") or ["--images-dir", str(d / "blocker" / "images")]))
    # train's output paths (the CLI's atomic output directory)
    rows = base_rows(rng)
    cases.append(Case("train-out/under-a-file", writer("jsonl", rows), "error", lead=True,
                      out=lambda d: (d / "blocker").write_text("") or d / "blocker" / "model"))
    cases.append(Case("train-out/name-too-long", writer("jsonl", rows), "error", lead=True, out=lambda d: d / ("m" * 300)))
    return cases


def all_cases() -> list[Case]:
    rng = random.Random(SEED)
    return semantic_cases(rng) + text_cases(rng) + csv_cases(rng) + binary_cases(rng) + image_cases(rng) + convert_cases(rng)
