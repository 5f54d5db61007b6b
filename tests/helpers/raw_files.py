"""Small fixture files in each real raw format, written by tests (nothing downloaded)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# (user, item, rating, timestamp) rows shared by the format fixtures.
RATINGS: list[tuple[str, str, float, int]] = [
    ("1", "10", 5.0, 100),
    ("1", "11", 3.0, 200),
    ("1", "12", 4.0, 300),
    ("2", "10", 2.0, 150),
    ("2", "12", 4.5, 250),
    ("2", "13", 1.0, 350),
    ("3", "11", 4.0, 400),
]
MOVIES: list[tuple[str, str, list[str]]] = [
    ("10", "Toy Story (1995)", ["Animation", "Comedy"]),
    ("11", "Heat (1995)", ["Action", "Crime"]),
    ("12", "American President, The (1995)", ["Comedy", "Romance"]),
    # item 13 has ratings but no metadata row on purpose
]
GENRES_100K = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def write_lines(path: Path, lines: Sequence[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def atomic(folder: Path, stem: str = "ml-test", extra_inter: Sequence[str] = ()) -> Path:
    write_lines(
        folder / f"{stem}.inter",
        ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
        + [f"{u}\t{i}\t{r:g}\t{t}" for u, i, r, t in RATINGS]
        + list(extra_inter),
    )
    write_lines(
        folder / f"{stem}.item",
        ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
        + [f"{i}\t{title.rsplit(' (', 1)[0]}\t1995\t{' '.join(g)}" for i, title, g in MOVIES],
    )
    write_lines(
        folder / f"{stem}.user",
        [
            "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
            "1\t24\tM\ttechnician\t85711",
            "2\t53\tF\tother\t94043",
            "3\t23\tM\twriter\t32067",
        ],
    )
    return folder


def movielens_100k_raw(folder: Path) -> Path:
    write_lines(folder / "u.data", [f"{u}\t{i}\t{int(r)}\t{t}" for u, i, r, t in RATINGS if r == int(r)])
    items = []
    for i, title, genres in MOVIES:
        flags = "|".join("1" if g in genres else "0" for g in GENRES_100K)
        items.append(f"{i}|{title}|01-Jan-1995||http://example.invalid/{i}|{flags}")
    items.append(f"99|Café Society (1995)|01-Jan-1995||http://example.invalid/99|{'|'.join(['0'] * 19)}")
    write_lines(folder / "u.item", items, encoding="latin-1")
    write_lines(folder / "u.user", ["1|24|M|technician|85711", "2|53|F|other|94043", "3|23|M|writer|32067"])
    return folder


def movielens_dat(folder: Path) -> Path:
    write_lines(folder / "ratings.dat", [f"{u}::{i}::{r:g}::{t}" for u, i, r, t in RATINGS])
    write_lines(
        folder / "movies.dat", [f"{i}::{title}::{'|'.join(g)}" for i, title, g in MOVIES], encoding="latin-1"
    )
    write_lines(folder / "users.dat", ["1::M::25::12::85711", "2::F::50::1::94043", "3::M::18::20::32067"])
    return folder


def movielens_csv(folder: Path) -> Path:
    write_lines(
        folder / "ratings.csv",
        ["userId,movieId,rating,timestamp"] + [f"{u},{i},{r:g},{t}" for u, i, r, t in RATINGS],
    )
    rows = ["movieId,title,genres"]
    for i, title, genres in MOVIES:
        quoted = f'"{title}"' if "," in title else title
        rows.append(f"{i},{quoted},{'|'.join(genres)}")
    rows.append('14,"Ghost ""Story"" (2000)",(no genres listed)')
    write_lines(folder / "movies.csv", rows)
    return folder


def amazon2023(folder: Path, category: str = "All_Beauty") -> Path:
    reviews = [
        {
            "rating": r,
            "title": "t",
            "text": "x",
            "images": [],
            "asin": f"A{i}",
            "parent_asin": f"P{i}",
            "user_id": f"U{u}",
            "timestamp": t * 1000,
            "helpful_vote": 0,
            "verified_purchase": True,
        }
        for u, i, r, t in RATINGS
    ]
    write_lines(folder / f"{category}.jsonl", [json.dumps(r) for r in reviews])
    meta: list[dict[str, Any]] = [
        {
            "main_category": "Beauty",
            "title": title,
            "average_rating": 4.0,
            "rating_number": 3,
            "features": ["soft"],
            "description": [f"About {title}"],
            "price": None,
            "images": [{"large": f"https://example.invalid/{i}.jpg"}],
            "videos": [],
            "store": "S",
            "categories": genres,
            "details": {},
            "parent_asin": f"P{i}",
            "bought_together": None,
        }
        for i, title, genres in MOVIES
    ]
    meta[1]["categories"] = []  # falls back to main_category
    write_lines(folder / f"meta_{category}.jsonl", [json.dumps(m) for m in meta])
    return folder


def criteo(folder: Path) -> Path:
    rows = []
    for n in range(6):
        dense = [str(n + k) if (n + k) % 4 else "" for k in range(13)]
        sparse = [f"{(n * 7 + k) % 3:08x}" if k % 5 else "" for k in range(26)]
        rows.append("\t".join([str(n % 2), *dense, *sparse]))
    write_lines(folder / "train.txt", rows)
    return folder


def canonical_parquet(folder: Path) -> Path:
    """A warehouse-style export: integer ids (cast to strings on ingest), seconds, nullable rating."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    interactions = pa.table(
        {
            "user_id": pa.array([int(u) for u, _, _, _ in RATINGS]),
            "item_id": pa.array([int(i) for _, i, _, _ in RATINGS]),
            "timestamp": pa.array([t for _, _, _, t in RATINGS], pa.int64()),
            "rating": pa.array([r for _, _, r, _ in RATINGS]),
        }
    )
    pq.write_table(interactions, folder / "interactions.parquet")
    items = pa.table(
        {
            "item_id": [i for i, _, _ in MOVIES],
            "title": [t for _, t, _ in MOVIES],
            "categories": pa.array([g for _, _, g in MOVIES], pa.list_(pa.string())),
        }
    )
    pq.write_table(items, folder / "items.parquet")
    return folder


def criteo_learnable(path: Path, rows: int, seed: int) -> Path:
    """A Criteo-format TSV whose label depends on one categorical and one dense column, so a model
    trained on the first rows scores the last ones better than chance."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        signal = int(rng.integers(0, 4))
        label = int(rng.random() < (0.85 if signal < 2 else 0.15))
        dense = [str(int(rng.integers(0, 50)) + 100 * signal)] + [
            str(int(rng.integers(0, 9))) for _ in range(12)
        ]
        sparse = [f"{signal:08x}"] + [f"{int(rng.integers(0, 20)):08x}" for _ in range(25)]
        lines.append("\t".join([str(label), *dense, *sparse]))
    return write_lines(path, lines)


def shop_export(folder: Path, users: int = 120, items: int = 80, events: int = 4000, seed: int = 0) -> Path:
    """A shop's order export as a spreadsheet writes it (header, quoted fields with commas, CRLF line ends)
    plus a product file: Zipf-popular items, 1-5 stars, one order a minute and a half apart from March 2024.
    Returns the folder."""
    import csv

    import numpy as np

    rng = np.random.default_rng(seed)
    popularity = 1 / np.arange(1, items + 1) ** 0.8
    popularity /= popularity.sum()
    start = 1_709_251_200  # 2024-03-01 UTC
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[tuple[int, int]] = set()
    with (folder / "orders.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(["customer", "sku", "stars", "ordered_at"])
        for event in range(events):
            user, item = int(rng.integers(users)), int(rng.choice(items, p=popularity))
            if (user, item) in seen:
                continue
            seen.add((user, item))
            when = start + event * 97 + int(rng.integers(50))
            writer.writerow([f"c{user}", f"sku{item}", int(rng.integers(1, 6)), when])
    with (folder / "products.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(["sku", "name", "category"])
        for item in range(items):
            category = ["Food", "Toys", "Books"][item % 3]
            writer.writerow([f"sku{item}", f"Product {item}, size {item % 3}", category])
    return folder


def shop_config(config_dir: Path, export: Path, name: str = "mine") -> Path:
    """``<config_dir>/data/<name>.yaml`` describing :func:`shop_export` with the csv template."""
    path = config_dir / "data" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "defaults:\n  - csv\n  - _self_\n"
        f"name: {name}\npath: {export}\ninteractions: orders.csv\n"
        "columns: {user_id: customer, item_id: sku, timestamp: ordered_at, rating: stars}\n"
        "rating_min: 1\nrating_max: 5\n"
        "items: {path: products.csv, item_id: sku, title: name, categories: category}\n"
    )
    return path
