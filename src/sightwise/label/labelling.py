"""Build a labelling session from command-line choices: a pool folder (or the audit's
suspects) + the labels file + optionally a bundle. The web server that shows it lives in
sightwise.serve.label_app (a higher layer); the CLI joins the two.
"""

from __future__ import annotations

from collections.abc import Callable

from sightwise.errors import SightwiseError
from sightwise.label.order import STRATEGIES
from sightwise.label.pool import Pool
from sightwise.label.session import LEASE_S, LabelSession, ModelView
from sightwise.label.store import MARKERS, LabelStore, check_class_names


def parse_classes(text: str | None) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c'] (validated); None stays None."""
    if text is None:
        return None
    return check_class_names([c for c in text.split(",") if c.strip()] or [""])


def open_session(pool: Pool, out: str, *, classes: list[str] | None = None,
                 bundle: str | None = None, order: str = "auto", lease_s: float = LEASE_S,
                 seed: int = 0, progress: bool = True,
                 log: Callable[[str], None] = print) -> LabelSession:
    """The session `sightwise label` serves. Classes come from --classes, else the bundle."""
    if order not in STRATEGIES:
        raise ValueError(f"--order must be one of {', '.join(STRATEGIES)}, got {order!r}")
    for note in pool.notes:
        log(note)
    model: ModelView | None = None
    if bundle is not None:
        from sightwise.label.suggest import model_view

        model = model_view(bundle, pool, progress=progress, log=log)
    if classes is None:
        if model is None:
            raise SightwiseError("give the classes (--classes a,b,c) or a bundle (--bundle B)")
        classes = check_class_names(model.classes)
    store = LabelStore(out)
    try:
        for note in store.notes:
            log(note)
        _check_known(store, classes)
        return LabelSession(pool, store, classes, model=model, order=order, lease_s=lease_s,
                            seed=seed, log=log)
    except BaseException:
        store.close()
        raise


def _check_known(store: LabelStore, classes: list[str]) -> None:
    """Refuse to continue a labels file whose labels the class list does not know: the page
    could neither show nor count them, and a typo in --classes would go unnoticed."""
    unknown: dict[str, int] = {}
    for a in store.answers:
        if a.label not in classes and a.label not in MARKERS:
            unknown[a.label] = unknown.get(a.label, 0) + 1
    if unknown:
        listed = ", ".join(f"{k} ({v} rows)" for k, v in sorted(unknown.items()))
        raise SightwiseError(f"{store.path} has labels not in the classes: {listed}; add them "
                             "to --classes or write to another --out")


def review_pool(result: dict) -> Pool:
    """The audit's suspects (then conflicting near-duplicates) as a pool to review, most
    suspicious first, each carrying its given and suggested label."""
    paths, metas = [], []
    for s in result.get("suspects", []):
        paths.append(s["path"])
        metas.append({"given": s["given"], "suggested": s["suggested"], "review": True,
                      "reason": f"label error suspect (score {s['score']:.2f})"})
    for pair in result.get("conflicting_duplicates", []):
        for me, other in (("a", "b"), ("b", "a")):
            paths.append(pair[me]["path"])
            metas.append({"given": pair[me]["label"], "review": True, "reason": f"near-duplicate of "
                          f"{pair[other]['path']} labelled {pair[other]['label']}"})
    if not paths or any(p.startswith("npz://") for p in paths):
        raise SightwiseError("nothing to review" if not paths else
                             "images inside an .npz cannot be shown on the labelling page")
    return Pool.from_paths(paths, metas)
