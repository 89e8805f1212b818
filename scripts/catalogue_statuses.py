"""What the service does with a catalogue group's photos once their mark is a template: each
group of `clearmark catalogue eval` (seed 0, 8 groups) learns its K = 8 template, then its 8
learned photos and its 4 new uploads go through `process_image` with that template (shipped
engines, ONNX Runtime). Prints, per way a photo was cleaned (`template:t` or the
single-image pipeline) and status, how many photos, and each template result sent to
review with its reason.

    python scripts/catalogue_statuses.py [dev|train]
"""

from __future__ import annotations

import sys
from collections import Counter

from clearmark.models.scenes import DEFAULT_DATA
from clearmark.pipeline import catalogue
from clearmark.pipeline import evaluate_catalogue as ev
from clearmark.pipeline.process import Engines, process_image
from clearmark.settings import get_settings


def main(split: str = "dev") -> None:
    groups, _ = ev.build_groups(str(DEFAULT_DATA), split, 8, 0)
    settings = get_settings().replace(backend="onnxruntime")
    engines = Engines.load(settings)
    tally: Counter[tuple[str, str]] = Counter()
    for g in groups:
        try:
            t = catalogue.estimate([p.composite for p in g.photos[:8]])
        except catalogue.RejectedGroup as exc:
            print(f"{g.name}: refused ({exc})")
            continue
        for i, p in enumerate(g.photos[:8] + g.photos[-ev.NEW :]):
            r = process_image(p.upload, engines, settings, templates=[("t", t)])
            method = r.metrics.get("method") or "single-image"
            tally[(method, r.status)] += 1
            if method != "single-image" and r.status == "needs_review":
                print(f"{g.name} photo {i}: {(r.review_reason or '')[:160]}")
    for (method, status), n in sorted(tally.items()):
        print(f"{method:14} {status:14} {n}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
