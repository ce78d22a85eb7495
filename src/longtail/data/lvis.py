"""LVIS (v0.5 and v1) as a data source, and the COCO -> LVIS label space of Weng et al. 2021, §4 / Table 1.

* **Images.** An LVIS image record names its COCO image by ``coco_url`` (v1; e.g.
  ``http://images.cocodataset.org/train2017/000000391895.jpg``) or ``file_name`` (v0.5; e.g.
  ``COCO_val2014_000000397133.jpg``). The file is looked up, by its COCO 2017 name, in every folder of the
  source's ``images`` (a string or a list: LVIS v1 val images come from COCO train2017 *and* val2017).
* **Categories.** The label space is LVIS's: every category keeps ``synset``, ``frequency`` (r / c / f, the
  groups of APr / APc / APf), ``image_count`` and ``instance_count``; ``coco_name`` is the COCO category with the
  same synset (``data.synsets``, i.e. data/lvis/coco_to_synset.json), ``split`` is ``base`` when that COCO name is
  one of ``data.base_categories`` and ``novel`` otherwise: with the 80 COCO names as base (the paper's
  protocol) the novel categories are exactly the LVIS categories without a COCO synset.
* **Federated ground truth.** Each image keeps ``neg_category_ids`` and ``not_exhaustive_category_ids``, which
  ``LVISEval`` needs; COCO instances / panoptic sources are mapped into the LVIS ids through the synsets.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from longtail.common.errors import LongtailError

#: keys of an LVIS image record that LVISEval reads (federated annotation)
LVIS_IMAGE_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")
#: keys of an LVIS category kept in the pipeline's categories
LVIS_CATEGORY_KEYS = ("synset", "frequency", "image_count", "instance_count")
FREQUENCIES = ("r", "c", "f")


def image_folders(src: dict) -> list[str]:
    """The image folders of a data source (``images``: one folder or a list)."""
    folders = src["images"]
    return [folders] if isinstance(folders, str) else list(folders)


def candidate_names(im: dict) -> list[str]:
    """File names under which the COCO image of an LVIS (or COCO) image record may be stored, best first."""
    names = []
    for key in ("coco_url", "file_name"):
        if im.get(key):
            name = str(im[key]).rsplit("/", 1)[-1]
            names.append(name)
            if name.startswith("COCO_") and "_" in name[5:]:     # COCO 2014 name -> 2017 name
                names.append(name.rsplit("_", 1)[-1])
    if "id" in im:
        names.append(f"{int(im['id']):012d}.jpg")
    return list(dict.fromkeys(names))


def resolve_image(im: dict, folders: list[Path]) -> Path | None:
    """The first existing ``folder / name`` over the configured folders and :func:`candidate_names`."""
    names = candidate_names(im)
    for folder in folders:
        for name in names:
            p = folder / name
            if p.exists():
                return p
    return None


def image_key(im: dict) -> str:
    """The key of the image record that names its file (for error messages)."""
    return "coco_url" if im.get("coco_url") else "file_name"


def check_lvis_file(raw: dict, path: Path) -> None:
    """Raise unless ``raw`` looks like an LVIS annotation file (categories with synset and frequency)."""
    for key in ("images", "annotations", "categories"):
        if key not in raw:
            raise LongtailError(f"{path} has no '{key}' list: not an LVIS annotation file (format: lvis)")
    for c in raw["categories"]:
        for key in ("id", "name", "synset", "frequency"):
            if key not in c:
                raise LongtailError(f"{path}: category {c.get('id', '?')} has no '{key}': not an LVIS file "
                                    f"(LVIS v0.5 and v1 categories carry synset and frequency); use format: "
                                    f"instances for COCO files")
        if c["frequency"] not in FREQUENCIES:
            raise LongtailError(f"{path}: category {c['id']} has frequency {c['frequency']!r}, not one of "
                                f"{'/'.join(FREQUENCIES)}")
    for im in raw["images"]:
        if not (im.get("coco_url") or im.get("file_name")):
            raise LongtailError(f"{path}: image {im.get('id', '?')} has neither 'coco_url' nor 'file_name'")


def base_synsets(base_names: list[str], synsets: dict, synsets_path: str) -> dict[str, str]:
    """COCO base category name -> its synset (``data.synsets``)."""
    unknown = [n for n in base_names if n not in synsets]
    if unknown:
        raise LongtailError(f"data.base_categories: {unknown} are not COCO category names of {synsets_path} "
                            f"(e.g. 'airplane', 'dining table', 'tv'); fix params.yaml")
    return {n: synsets[n]["synset"] for n in base_names}


def lvis_categories(raw_categories: list[dict], base_names: list[str], synsets: dict,
                    synsets_path: str) -> list[dict]:
    """LVIS categories with ``split`` (base / novel) and ``coco_name`` (None: no COCO synset)."""
    base = set(base_synsets(base_names, synsets, synsets_path).values())
    coco_of = {v["synset"]: name for name, v in synsets.items()}
    out = []
    for c in sorted(raw_categories, key=lambda c: c["id"]):
        out.append({"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", ""),
                    **{k: c[k] for k in LVIS_CATEGORY_KEYS if k in c},
                    "coco_name": coco_of.get(c["synset"]),
                    "split": "base" if c["synset"] in base else "novel"})
    return out


def same_categories(a: list[dict], b: list[dict], path_a: Path, path_b: Path) -> None:
    """Raise unless two LVIS files share their category ids and synsets (same LVIS version)."""
    sa = {c["id"]: c["synset"] for c in a}
    sb = {c["id"]: c["synset"] for c in b}
    if sa != sb:
        diff = sorted(set(sa.items()) ^ set(sb.items()))[:5]
        raise LongtailError(f"{path_a} and {path_b} have different LVIS categories (e.g. {diff}): all lvis "
                            f"sources must be of one LVIS version (v0.5 or v1)")


def coco_to_lvis(coco_categories: list[dict], lvis_cats: list[dict], synsets: dict) -> dict[int, int]:
    """COCO category id -> LVIS category id, through the synsets (COCO name -> synset -> LVIS id)."""
    by_syn = {c["synset"]: c["id"] for c in lvis_cats}
    out = {}
    for c in coco_categories:
        s = synsets.get(c["name"])
        if s and s.get("synset") in by_syn:
            out[c["id"]] = by_syn[s["synset"]]
    return out


def category_counts(categories: list[dict], train: dict | None = None) -> dict:
    """The label space in numbers: base / novel, per LVIS frequency group, categories with a COCO synset, and
    (``train``: the split anchors are drawn from) categories without any train mask (they cannot get an anchor)."""
    out: dict = {"categories": len(categories),
                 "base": sum(c["split"] == "base" for c in categories),
                 "novel": sum(c["split"] == "novel" for c in categories)}
    if categories and "frequency" in categories[0]:
        out["with_coco_synset"] = sum(c.get("coco_name") is not None for c in categories)
        out["novel_without_coco_synset"] = sum(c["split"] == "novel" and c.get("coco_name") is None
                                               for c in categories)
        for split in ("base", "novel"):
            f = Counter(c["frequency"] for c in categories if c["split"] == split)
            out[f"{split}_by_frequency"] = {g: f.get(g, 0) for g in FREQUENCIES}
    if train is not None:
        with_masks = {a["category_id"] for a in train["annotations"] if not a.get("iscrowd", 0)}
        missing = [c for c in categories if c["id"] not in with_masks]
        out["without_train_masks"] = len(missing)
        out["novel_without_train_masks"] = sum(c["split"] == "novel" for c in missing)
        out["without_train_masks_ids"] = [c["id"] for c in missing]
    return out


class LabelSpace:
    """The categories every output of ``longtail prepare`` shares, and how each source's ids map into them.

    ``coco``: no lvis source; the categories are COCO's (set by the caller), every source keeps its ids.
    ``lvis``: the categories are those of the lvis sources (the first one read; the others must agree); lvis
    sources keep their ids, instances / panoptic sources are mapped through the synsets (``data.synsets``).
    """

    def __init__(self, cfg: dict, root: Path, load):
        self.kind = "lvis" if any(s["format"] == "lvis" for s in cfg["sources"]) else "coco"
        self.cfg, self.root, self._load = cfg, root, load
        self.categories: list[dict] | None = None
        self._first: Path | None = None
        self.synsets = (load(root / cfg["synsets"], "COCO -> LVIS synset map (data.synsets)")
                        if self.kind == "lvis" else None)

    def id_map(self, src: dict, raw: dict, path: Path) -> dict[int, int] | None:
        """Source category id -> label-space id (None: ids kept). The first lvis file sets the categories."""
        if src["format"] == "lvis":
            check_lvis_file(raw, path)
            if self.categories is None:
                self.categories = lvis_categories(raw["categories"], self.cfg["base_categories"], self.synsets,
                                                  self.cfg["synsets"])
                self._first = path
            else:
                same_categories(self.categories, raw["categories"], self._first, path)
            return None
        if self.kind == "coco":
            return None
        if self.categories is None:
            first = next(s for s in self.cfg["sources"] if s["format"] == "lvis")
            fpath = self.root / first["annotations"]
            self.id_map(first, self._load(fpath, f"annotation file of source {first['name']}/{first['split']}"),
                        fpath)
        things = [c for c in raw["categories"] if c.get("isthing", 1) == 1]
        return coco_to_lvis(things, self.categories, self.synsets)
