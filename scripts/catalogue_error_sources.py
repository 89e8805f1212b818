"""Where a catalogue template's error inside the mark comes from, on the dev groups of
`clearmark catalogue eval` (seed 0, the first N groups, K = 8): the photos inverted with the
estimated template and with the true one (a*W as drawn, no shift), each through `invert`
(weighted with the inpainted background) and as the pure blend inversion, and the
estimate's opacity error on and off the mark.

    python scripts/catalogue_error_sources.py [N]
"""

from __future__ import annotations

import sys

import cv2
import numpy as np

from clearmark.models.evaluate import psnr
from clearmark.models.scenes import DEFAULT_DATA
from clearmark.pipeline import catalogue
from clearmark.pipeline import evaluate_catalogue as ev


def pure(rgb: np.ndarray, m: catalogue.Match) -> np.ndarray:
    """(I - a*W) / (1 - a), opacity capped at ALPHA_SOLID, over the template's box."""
    t = m.template
    x0, y0, x1, y1 = t.box
    out = rgb.astype(np.float32)
    shift = np.array([[1, 0, m.shift[0]], [0, 1, m.shift[1]]], np.float32)
    a = cv2.warpAffine(t.alpha, shift, (x1 - x0, y1 - y0))[..., None]
    c = cv2.warpAffine(t.premult, shift, (x1 - x0, y1 - y0))
    crop = out[y0:y1, x0:x1]
    a = np.minimum(a, catalogue.ALPHA_SOLID)
    out[y0:y1, x0:x1] = np.where(a > 0.01, (crop - c) / (1 - a), crop)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def main(n_groups: int) -> None:
    groups, _ = ev.build_groups(str(DEFAULT_DATA), "dev", n_groups, 0)
    for g in groups:
        photos = g.photos[:8]
        try:
            t = catalogue.estimate([p.composite for p in photos], min_images=2)
        except catalogue.RejectedGroup:
            print(f"{g.name:22} refused")
            continue
        ys, xs = np.nonzero(g.true_alpha > 0)
        h, w = g.true_alpha.shape
        box = (max(0, xs.min() - 12), max(0, ys.min() - 12), min(w, xs.max() + 13), min(h, ys.max() + 13))
        x0, y0, x1, y1 = (int(v) for v in box)
        truth = catalogue.Template(
            g.true_alpha[y0:y1, x0:x1].astype(np.float32),
            g.true_premult[y0:y1, x0:x1].astype(np.float32),
            (x0, y0, x1, y1),
            (h, w),
            g.rule,
        )
        rows: dict[str, list[float]] = {k: [] for k in ("est", "est_pure", "true", "true_pure", "none")}
        for p in photos:
            rows["none"].append(psnr(p.composite, p.clean, p.mask))
            for name, tt in (("est", t), ("true", truth)):
                m = catalogue.match(p.composite, tt)
                if m is None:
                    continue
                if name == "true":
                    m = catalogue.Match(m.score, (0.0, 0.0), m.template)
                inv = catalogue.invert(p.composite, m)
                rows[name].append(psnr(catalogue.fill_residue(inv.restored, inv.residue), p.clean, p.mask))
                rows[f"{name}_pure"].append(psnr(pure(p.composite, m), p.clean, p.mask))
        true_alpha = cv2.resize(g.true_alpha, t.frame[::-1]) if t.frame != (h, w) else g.true_alpha
        bx0, by0, bx1, by1 = t.box
        err = np.abs(t.alpha - true_alpha[by0:by1, bx0:bx1])
        on = true_alpha[by0:by1, bx0:bx1] > 0.02
        cells = " ".join(f"{k} {np.nanmean(v):5.1f}" for k, v in rows.items())
        alpha = f"alpha error {err[on].mean():.3f} on / {err[~on].mean():.3f} off"
        print(f"{g.name:22} opacity {g.opacity:.2f} {alpha} | {cells}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
