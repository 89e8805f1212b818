"""Which pipeline made a result: the code version and the weights' hashes, read without
loading any engine (the API and the bulk commands use them; `pipeline.Engines.version` is
the full string a worker records, backend included)."""

from __future__ import annotations

from clearmark.models.weights import weights_sha256

PIPELINE_CODE_VERSION = "10"  # 2: the remover gets a Telea prefill of its crop;
# 3: the remover's mask output confirms what changes;
# 4: mirrored passes, 6 px dilation, own mark threshold;
# 5: the do-no-harm gate (pipeline.gate);
# 6: JPEG keeps its coefficients outside the change;
# 7: statuses from every flagged region (pipeline.verdict);
# 8: a text line the removal cut in part goes to review;
# 9: a job in review shows the removal the gate doubted (pipeline.process.Proposal), and
#    catalogue templates match over the mark's own edges (pipeline.catalogue.match);
# 10: the mask reports as mark only the pixels the removal moved, and never the changed
#    ring (it had 128 where the ring's alpha was 255); a proposal shows removed a line the
#    text prior calls printed when the gated removal took it whole (LINE_WHOLE)


def current_version_pattern() -> str:
    """LIKE pattern of the `Engines.version` a worker would write now, any backend:
    `pipeline-<code>+detector:<sha12>:%+remover:<sha12>:%` (Engine.key starts kind:sha12:)."""
    return (
        f"pipeline-{PIPELINE_CODE_VERSION}+detector:{weights_sha256('detector')[:12]}:%"
        f"+remover:{weights_sha256('remover')[:12]}:%"
    )


def pipeline_fingerprint() -> str:
    """Code version and weights hashes (the backend may differ between workers but not the
    output's meaning): part of the API's default idempotency key."""
    return "+".join(
        [
            f"pipeline-{PIPELINE_CODE_VERSION}",
            *(weights_sha256(kind)[:16] for kind in ("detector", "remover")),
        ]
    )
